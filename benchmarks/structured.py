"""The cost of structured output (the decoders-structured plugin, llguidance): compile times and per-token time.

In one process, on the embedded model (or ``--model``), greedy, batch 1, chat template:

- **compile**: converting the tokenizer's vocabulary for llguidance (once per tokenizer), compiling a JSON Schema,
  a regex and a Lark grammar (once per grammar and tokenizer), and what a later generation pays (cached);
- **mask**: the constraint's time per step at the model's vocabulary (fill the row's bitmask, expand, mask);
- **per token**: alternating pairs of (a) greedy generation constrained by a person-record JSON Schema, which
  ends by EOS after N tokens, and (b) unconstrained greedy generation of exactly N tokens (EOS ignored) of the same
  prompt; the ratio of their times is the per-token cost of the constraint (median over the pairs);
- **constraint share**: one constrained generation with the constraint's methods timed: the ratio of the whole
  time to the time without the constraint's own — the overhead measured directly, which the machine's noise
  between runs does not blur.

    python benchmarks/structured.py                 # writes benchmarks/results/structured.json
    python benchmarks/structured.py --quick --model FOLDER --output out.json   # a smoke run on a tiny model
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch

import decoders
from decoders_structured.grammars import _ll_tokenizer, json_schema_grammar, lark_grammar, regex_grammar
from llguidance import LLMatcher

RESULTS = Path(__file__).parent / "results"
PERSON = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "maxLength": 40},
        "age": {"type": "integer", "minimum": 0, "maximum": 120},
        "email": {"type": "string", "maxLength": 60},
        "city": {"type": "string", "maxLength": 40},
        "hobbies": {"type": "array", "items": {"type": "string", "maxLength": 30}, "maxItems": 5},
    },
    "required": ["name", "age", "city"],
    "additionalProperties": False,
}
REGEX = r"[A-Z][a-z]{2,12} [A-Z][a-z]{2,12}, (19|20)[0-9]{2}-(0[1-9]|1[0-2])-[0-3][0-9]"
LARK = """
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]+/
"""
PROMPT = "Invent a person and describe them as a JSON object with name, age, email, city and hobbies."


def timed(function, repeats: int) -> float:
    """Median seconds of ``function()`` over ``repeats`` calls."""
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def compile_times(loaded, repeats: int) -> dict:
    tokenizer, eos = loaded.tokenizer, tuple(loaded.eos_token_ids)
    ll_tokenizer = _ll_tokenizer(tokenizer, eos)
    grammars = {"json_schema": json_schema_grammar(PERSON), "regex": regex_grammar(REGEX), "grammar": lark_grammar(LARK)}
    cached = decoders.Strategy.model_validate({"processors": [{"kind": "json_schema", "json_schema": PERSON}]}).build()
    context = decoders.DecodeContext(eos_token_ids=eos, tokenizer=tokenizer)
    cached.reset(context)  # compiles once
    return {
        "tokenizer_ms": 1e3 * timed(lambda: _ll_tokenizer(tokenizer, eos), max(1, repeats // 4)),
        **{f"{kind}_ms": 1e3 * timed(lambda g=g: LLMatcher(ll_tokenizer, g), repeats) for kind, g in grammars.items()},
        "cached_reset_ms": 1e3 * timed(lambda: cached.reset(context), repeats),
    }


def mask_time(loaded, repeats: int) -> dict:
    """The constraint's time per step, at the start of the object and inside a string."""
    tokenizer = loaded.tokenizer
    chain = decoders.Strategy.model_validate({"processors": [{"kind": "json_schema", "json_schema": PERSON}]}).build()
    chain.reset(decoders.DecodeContext(eos_token_ids=tuple(loaded.eos_token_ids), tokenizer=tokenizer))
    width = loaded.model.get_output_embeddings().weight.shape[0]
    logits, ids = torch.randn(1, width), torch.zeros(1, 0, dtype=torch.long)
    start = 1e6 * timed(lambda: chain.process(ids, logits), repeats)
    for token in tokenizer.encode('{"name":"Jo', add_special_tokens=False):
        chain.accept(torch.tensor([token]))
    return {"vocabulary": width, "start_us": start, "in_string_us": 1e6 * timed(lambda: chain.process(ids, logits), repeats)}


def per_token(loaded, pairs: int, max_new_tokens: int) -> dict:
    constrained = {"processors": [{"kind": "json_schema", "json_schema": PERSON}], "selector": {"kind": "greedy"}}
    options = dict(model=loaded, chat=bool(getattr(loaded.tokenizer, "chat_template", None)))
    warm = decoders.generate(PROMPT, constrained, max_new_tokens=max_new_tokens, **options)
    tokens = len(warm.generated_ids)
    decoders.generate(PROMPT, "greedy", max_new_tokens=tokens, ignore_eos=True, **options)
    ratios, on, off = [], [], []
    for _ in range(pairs):
        start = time.perf_counter()
        result = decoders.generate(PROMPT, constrained, max_new_tokens=max_new_tokens, **options)
        on.append(time.perf_counter() - start)
        start = time.perf_counter()
        decoders.generate(PROMPT, "greedy", max_new_tokens=tokens, ignore_eos=True, **options)
        off.append(time.perf_counter() - start)
        ratios.append(on[-1] / off[-1])
        assert result.generated_ids == warm.generated_ids  # greedy: the same tokens every time
    return {
        "tokens": tokens, "finish_reason": warm.finish_reason, "text": warm.text,
        "constrained_ms_per_token": 1e3 * statistics.median(on) / tokens,
        "unconstrained_ms_per_token": 1e3 * statistics.median(off) / tokens,
        "ratio_median": statistics.median(ratios), "ratios": ratios,
    }  # fmt: skip


def constraint_share(loaded, max_new_tokens: int) -> dict:
    """One constrained generation with the constraint's methods timed: its own time per token, and the whole
    generation's — a direct measure of the overhead that the machine's noise does not blur."""
    from decoders_structured.processor import GrammarConstraint

    spent = [0.0]
    originals = {name: getattr(GrammarConstraint, name) for name in ("reset", "process", "to_candidates", "accept")}

    def timed_method(method):
        def run(self, *args):
            start = time.perf_counter()
            try:
                return method(self, *args)
            finally:
                spent[0] += time.perf_counter() - start

        return run

    constrained = {"processors": [{"kind": "json_schema", "json_schema": PERSON}], "selector": {"kind": "greedy"}}
    chat = bool(getattr(loaded.tokenizer, "chat_template", None))
    for name, method in originals.items():
        setattr(GrammarConstraint, name, timed_method(method))
    try:
        start = time.perf_counter()
        result = decoders.generate(PROMPT, constrained, model=loaded, chat=chat, max_new_tokens=max_new_tokens)
        total = time.perf_counter() - start
    finally:
        for name, method in originals.items():
            setattr(GrammarConstraint, name, method)
    tokens = len(result.generated_ids)
    return {
        "tokens": tokens, "constraint_ms_per_token": 1e3 * spent[0] / tokens, "total_ms_per_token": 1e3 * total / tokens,
        "ratio": total / (total - spent[0]),
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model name or folder (default: the embedded model)")
    parser.add_argument("--pairs", type=int, default=11, help="alternating constrained/unconstrained pairs")
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 pairs, few repeats, 24 tokens")
    parser.add_argument("--output", default=str(RESULTS / "structured.json"))
    args = parser.parse_args()
    pairs, repeats, max_new_tokens = (2, 3, 24) if args.quick else (args.pairs, 20, 128)
    loaded = decoders.load_model(args.model)
    report = {
        "model": loaded.name,
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count(), "load_average": os.getloadavg()},
        "compile": compile_times(loaded, repeats),
        "mask": mask_time(loaded, repeats),
        "per_token": per_token(loaded, pairs, max_new_tokens),
        "constraint_share": constraint_share(loaded, max_new_tokens),
    }  # fmt: skip
    Path(args.output).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(json.dumps(report, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
