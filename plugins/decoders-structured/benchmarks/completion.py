"""How often a constrained answer completes (valid JSON ending in EOS), plain chain vs repetition penalties.

A repetition penalty lowers tokens the text already holds; JSON repeats `"`, `:`, `,`, `}` and every key, so a
penalty that runs after the constraint can push a row away from closing a string, an array or the object. This
runs the same prompts and seeds with the plain chain (temperature 0.7, top-p 0.9, json_schema) and with one
penalty added — repetition_penalty, no_repeat_ngram, DRY (the ``llamacpp`` plugin; skipped when it is not
installed) — and counts the rows that end with EOS and validate (``complete``), the rows cut by
``max_new_tokens`` (``length``), the rows a penalty emptied (every token the constraint allows removed: the
generation raises NonFiniteLogitsError), and the mean number of tokens.

    OMP_NUM_THREADS=1 python plugins/decoders-structured/benchmarks/completion.py      # the embedded model, ~3 min
    python plugins/decoders-structured/benchmarks/completion.py --quick --model FOLDER --output out.json  # smoke run
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import jsonschema
import torch

import decoders

RESULTS = Path(__file__).parent / "results"
STRING = {"type": "string", "maxLength": 60}
NAME = {"type": "string", "maxLength": 40}

#: (prompt, schema): records, lists and nested lists, as asked of an assistant
CASES: list[tuple[str, dict]] = [
    ("Invent a person and describe them as JSON with name, age, email, city and hobbies.",
     {"type": "object", "properties": {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120},
      "email": STRING, "city": NAME, "hobbies": {"type": "array", "items": NAME, "maxItems": 5}},
      "required": ["name", "age", "city"], "additionalProperties": False}),
    ("List the first five prime numbers as a JSON array.",
     {"type": "array", "items": {"type": "integer"}, "minItems": 5, "maxItems": 5}),
    ("Give a simple pancake recipe as JSON: title, ingredients and minutes.",
     {"type": "object", "properties": {"title": NAME, "ingredients": {"type": "array", "items": NAME, "minItems": 2, "maxItems": 8},
      "minutes": {"type": "integer", "minimum": 1}}, "required": ["title", "ingredients", "minutes"], "additionalProperties": False}),
    ("Describe a famous novel as JSON with title, author, year and genres.",
     {"type": "object", "properties": {"title": NAME, "author": NAME, "year": {"type": "integer"},
      "genres": {"type": "array", "items": {"enum": ["fiction", "mystery", "romance", "science fiction", "fantasy", "history"]}, "maxItems": 3}},
      "required": ["title", "author", "year", "genres"], "additionalProperties": False}),
    ("Report today's weather in Paris as JSON.",
     {"type": "object", "properties": {"city": NAME, "temperature_c": {"type": "number"},
      "condition": {"enum": ["sunny", "cloudy", "rain", "snow"]}}, "required": ["city", "temperature_c", "condition"], "additionalProperties": False}),
    ("Write a to-do list for a Saturday as a JSON array of tasks.",
     {"type": "array", "items": {"type": "object", "properties": {"task": STRING, "done": {"type": "boolean"}},
      "required": ["task", "done"], "additionalProperties": False}, "minItems": 1, "maxItems": 5}),
    ("Describe a laptop for sale as JSON: name, price, tags and whether it is in stock.",
     {"type": "object", "properties": {"name": NAME, "price": {"type": "number", "minimum": 0},
      "tags": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 5}, "in_stock": {"type": "boolean"}},
      "required": ["name", "price", "tags", "in_stock"], "additionalProperties": False}),
    ("Review the movie Titanic as JSON with a title, a rating from 1 to 10 and a short summary.",
     {"type": "object", "properties": {"title": NAME, "rating": {"type": "integer", "minimum": 1, "maximum": 10},
      "summary": {"type": "string", "maxLength": 200}}, "required": ["title", "rating", "summary"], "additionalProperties": False}),
    ("Give the address of a museum as JSON.",
     {"type": "object", "properties": {"street": STRING, "city": NAME, "zip": {"type": "string", "pattern": "[0-9]{5}"}, "country": NAME},
      "required": ["street", "city", "zip", "country"], "additionalProperties": False}),
    ("Plan a birthday party as JSON: its name, its date and the guests.",
     {"type": "object", "properties": {"name": NAME, "date": {"type": "string", "format": "date"},
      "guests": {"type": "array", "items": NAME, "minItems": 1, "maxItems": 6}}, "required": ["name", "date", "guests"], "additionalProperties": False}),
    ("Classify the sentiment of 'I loved every minute of it' as JSON.",
     {"type": "object", "properties": {"label": {"enum": ["positive", "negative", "neutral"]},
      "confidence": {"type": "number", "minimum": 0, "maximum": 1}}, "required": ["label", "confidence"], "additionalProperties": False}),
    ("Write a shopping list for a week of breakfasts as a JSON array.",
     {"type": "array", "items": {"type": "object", "properties": {"item": NAME, "quantity": {"type": "integer", "minimum": 1}},
      "required": ["item", "quantity"], "additionalProperties": False}, "minItems": 2, "maxItems": 8}),
    ("Give facts about Japan as JSON: name, capital, population and languages.",
     {"type": "object", "properties": {"name": NAME, "capital": NAME, "population": {"type": "integer", "minimum": 0},
      "languages": {"type": "array", "items": NAME, "maxItems": 4}}, "required": ["name", "capital", "population", "languages"],
      "additionalProperties": False}),
    ("Ask an arithmetic question and answer it, as JSON.",
     {"type": "object", "properties": {"question": STRING, "answer": {"type": "integer"}}, "required": ["question", "answer"],
      "additionalProperties": False}),
    ("Pick a palette of four colors for a website as a JSON array of hex codes.",
     {"type": "array", "items": {"type": "string", "pattern": "^#[0-9a-f]{6}$"}, "minItems": 4, "maxItems": 4}),
    ("Describe a software engineer as JSON: name, role, skills and years of experience.",
     {"type": "object", "properties": {"name": NAME, "role": {"enum": ["junior", "senior", "lead", "manager"]},
      "skills": {"type": "array", "items": {"type": "string", "maxLength": 20}, "maxItems": 6},
      "years": {"type": "integer", "minimum": 0, "maximum": 50}}, "required": ["name", "role", "skills", "years"], "additionalProperties": False}),
]  # fmt: skip

BASE = [{"kind": "temperature", "temperature": 0.7}, {"kind": "top_p", "top_p": 0.9}]
#: the penalties compared, each added to the plain chain (with a value common in practice)
PENALTIES: dict[str, list[dict]] = {
    "plain": [],
    "repetition_penalty 1.3": [{"kind": "repetition_penalty", "repetition_penalty": 1.3}],
    "no_repeat_ngram 3": [{"kind": "no_repeat_ngram", "no_repeat_ngram_size": 3}],
    "dry 0.8": [{"kind": "dry", "dry_multiplier": 0.8}],
}


def strategy(penalty: list[dict], schema: dict) -> dict:
    return {
        "processors": [*penalty, *BASE, {"kind": "json_schema", "json_schema": schema}],
        "selector": {"kind": "sample"},
    }


def complete(result, schema: dict) -> bool:
    """Whether a row ended with EOS and its text is JSON valid for the schema."""
    if result.finish_reason != "eos":
        return False
    try:
        jsonschema.validate(json.loads(result.text), schema)
    except (json.JSONDecodeError, jsonschema.ValidationError):
        return False
    return True


def generate_rows(loaded, prompt: str, strategy_: dict, seeds: list[int], max_new_tokens: int) -> list:
    """One result per seed, or the error that stopped the row (a penalty that removed every token the constraint
    allows raises NonFiniteLogitsError for the whole batch: the seeds are then run one by one)."""
    chat = bool(getattr(loaded.tokenizer, "chat_template", None))
    options = {"model": loaded, "chat": chat, "max_new_tokens": max_new_tokens}
    try:
        return list(decoders.generate([prompt] * len(seeds), strategy_, seed=seeds, **options))
    except decoders.NonFiniteLogitsError as exc:
        if len(seeds) == 1:
            return [exc]
    rows = []
    for seed in seeds:
        try:
            rows.append(decoders.generate(prompt, strategy_, seed=seed, **options))
        except decoders.NonFiniteLogitsError as exc:
            rows.append(exc)
    return rows


def run(loaded, name: str, penalty: list[dict], cases, seeds: list[int], max_new_tokens: int) -> dict:
    """One configuration over every case and seed: counts of complete, cut and failed rows, mean tokens, seconds."""
    rows, start, cpu = [], time.perf_counter(), time.process_time()
    for prompt, schema in cases:
        for seed, result in zip(seeds, generate_rows(loaded, prompt, strategy(penalty, schema), seeds, max_new_tokens)):
            if isinstance(result, Exception):
                rows.append({"prompt": prompt[:40], "seed": seed, "finish_reason": "error", "complete": False, "tokens": 0,
                             "text": str(result).splitlines()[0]})  # fmt: skip
                continue
            rows.append({"prompt": prompt[:40], "seed": seed, "finish_reason": result.finish_reason,
                         "complete": complete(result, schema), "tokens": len(result.generated_ids), "text": result.text})  # fmt: skip
    count = len(rows)
    finished = [r for r in rows if r["finish_reason"] != "error"]
    return {
        "name": name, "processors": penalty, "rows": count,
        "complete": sum(r["complete"] for r in rows), "length": sum(r["finish_reason"] == "length" for r in rows),
        "eos_invalid": sum(r["finish_reason"] == "eos" and not r["complete"] for r in rows),
        "error": count - len(finished),
        "mean_tokens": sum(r["tokens"] for r in finished) / max(1, len(finished)), "seconds": time.perf_counter() - start,
        "cpu_seconds": time.process_time() - cpu,
        "outputs": rows,
    }  # fmt: skip


def table(runs: list[dict], max_new_tokens: int) -> str:
    header = f"| chain (+ temperature 0.7, top-p 0.9, json_schema) | complete | cut at {max_new_tokens} tokens | row emptied (error) | mean tokens |"
    lines = [header, "|---|---:|---:|---:|---:|"]
    for r in runs:
        lines.append(
            f"| {r['name']} | {r['complete']}/{r['rows']} | {r['length']} | {r['error']} | {r['mean_tokens']:.0f} |"
        )
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", help="model name or folder (default: the embedded model)")
    parser.add_argument("--seeds", type=int, default=2, help="seeds per prompt (0, 1, …)")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--quick", action="store_true", help="a smoke run: 2 prompts, 1 seed, 16 tokens")
    parser.add_argument("--output", default=str(RESULTS / "completion.json"))
    args = parser.parse_args()
    cases, seeds, max_new_tokens = (
        (CASES[:2], [0], 16) if args.quick else (CASES, list(range(args.seeds)), args.max_new_tokens)
    )
    loaded = decoders.load_model(args.model)
    kinds = decoders.reload_registry().processors
    runs = []
    for name, penalty in PENALTIES.items():
        missing = [p["kind"] for p in penalty if p["kind"] not in kinds]
        if missing:
            print(f"skipped {name}: no processor kind {missing[0]!r} (install its plugin)")
            continue
        runs.append(run(loaded, name, penalty, cases, seeds, max_new_tokens))
        done = runs[-1]
        print(f"{name}: {done['complete']}/{done['rows']} complete ({done['seconds']:.0f} s, {done['cpu_seconds']:.0f} s CPU)", flush=True)
    report = {
        "model": loaded.name, "seeds": seeds, "max_new_tokens": max_new_tokens, "prompts": len(cases),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "threads": torch.get_num_threads(),
                    "cpus": os.cpu_count()},
        "runs": runs,
    }  # fmt: skip
    Path(args.output).parent.mkdir(parents=True, exist_ok=True)
    Path(args.output).write_text(json.dumps(report, indent=2, ensure_ascii=False) + "\n")
    print(table(runs, max_new_tokens))


if __name__ == "__main__":
    main()
