"""Grammars for llguidance: from a JSON Schema, a regex or a Lark grammar, checked with errors that say where.

Checking needs no tokenizer (it runs when a strategy is validated); compiling for a tokenizer happens once per
(grammar, tokenizer) and is cached for every later generation (:func:`compiled_matcher`).
"""

from __future__ import annotations

import json
import re
import threading
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from copy import copy
from functools import lru_cache
from typing import Any

from llguidance import LLMatcher, LLTokenizer


class GrammarError(ValueError):
    """A JSON Schema, regex or grammar that llguidance cannot use; the message says what and where."""


def json_options(whitespace_flexible: bool) -> dict[str, Any]:
    """llguidance's JSON options: no whitespace between JSON tokens unless asked (small models may loop on spaces)."""
    return {"whitespace_flexible": whitespace_flexible}


@lru_cache(maxsize=256)
def _checked(source: str, text: str) -> str:
    """The llguidance grammar for ``text`` of kind ``source`` ("json_schema:compact"/"json_schema:flexible",
    "regex", "grammar"), checked; raises :class:`GrammarError`."""
    if source.startswith("json_schema"):
        schema = json.loads(text)
        grammar = LLMatcher.grammar_from_json_schema(
            schema, overrides=json_options(source.endswith(":flexible"))
        )
        error = LLMatcher.validate_grammar(grammar)
        if error:
            raise GrammarError(schema_error(schema, error))
        return grammar
    if source == "regex":
        grammar = LLMatcher.grammar_from_regex(text)
        error = LLMatcher.validate_grammar(grammar)
        if error:
            raise GrammarError(f"invalid regex {text!r}: {_regex_reason(error)}{_regex_position(error)}")
        return grammar
    grammar = LLMatcher.grammar_from_lark(text)
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise GrammarError(lark_error(text, error))
    return grammar


def json_schema_grammar(schema: dict[str, Any], whitespace_flexible: bool = False) -> str:
    """The llguidance grammar of a JSON Schema (raises :class:`GrammarError` naming the schema location)."""
    return _checked(f"json_schema:{'flexible' if whitespace_flexible else 'compact'}", json.dumps(schema))


def regex_grammar(regex: str) -> str:
    """The llguidance grammar of a regex that the whole output must match."""
    return _checked("regex", regex)


def lark_grammar(grammar: str) -> str:
    """The llguidance grammar of a Lark grammar (llguidance's dialect: ``start`` is the top rule)."""
    return _checked("grammar", grammar)


# ---- error messages ------------------------------------------------------------------------------------------

_LOCATED = re.compile(r"^(?:at )?(\d+)\((\d+)\): (.*)$")


def lark_error(text: str, error: str) -> str:
    """``grammar error at line L, column C: …`` (with the line quoted) from llguidance's message."""
    first = error.strip().splitlines()[0]
    match = _LOCATED.match(first)
    if not match:
        return f"grammar error: {first}"
    line, column, message = int(match[1]), int(match[2]), match[3]
    lines = text.splitlines()
    quoted = f" in {lines[line - 1].strip()!r}" if 0 < line <= len(lines) else ""
    return f"grammar error at line {line}, column {column}{quoted}: {message}"


def _regex_reason(error: str) -> str:
    reasons = [line.removeprefix("error: ") for line in error.splitlines() if line.startswith("error: ")]
    return reasons[0] if reasons else error.strip().splitlines()[0]


def _regex_position(error: str) -> str:
    """`` at character N ('x')`` from the caret under the pattern in llguidance's (Rust regex) message."""
    lines = error.splitlines()
    for above, line in zip(lines, lines[1:]):
        if line.strip().startswith("^") and above.startswith("    ") and line.startswith("    "):
            column = line.index("^") - 4
            pattern = above[4:]
            shown = f" ({pattern[column]!r})" if column < len(pattern) else " (the end)"
            return f" at character {column + 1}{shown}"
    return ""


def _walk(node: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every ``(JSON pointer of the object, key, value)`` of a schema, depth first, in order."""
    if isinstance(node, dict):
        for key, value in node.items():
            yield path, key, value
            yield from _walk(value, f"{path}/{_escape(key)}")
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _walk(value, f"{path}/{index}")


def _escape(key: str) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _where(schema: Any, test) -> str | None:
    for path, key, value in _walk(schema):
        if test(key, value):
            return path or "/"
    return None


def schema_error(schema: Any, error: str) -> str:
    """llguidance's schema error, with the JSON pointer of the part of the schema it is about."""
    first = error.strip().splitlines()[0]
    unimplemented = re.match(r"Unimplemented keys: (\[.*\])", first)
    if unimplemented:
        keys = json.loads(unimplemented[1])
        at = _where(schema, lambda key, value: key in keys)
        where = f" at {at}" if at else ""
        return (
            f"unsupported JSON Schema feature {', '.join(map(repr, keys))}{where}: llguidance does not implement it; "
            "remove it from the schema (and check the output afterwards if it matters)"
        )
    for pattern, field in ((r"Invalid type: (.*)", "type"), (r"Unknown format: (.*)", "format")):
        found = re.match(pattern, first)
        if found:
            bad = found[1].strip()
            at = _where(schema, lambda key, value: key == field and (value == bad or (isinstance(value, list) and bad in value)))
            return f"invalid JSON Schema at {at or '/'}: {first}"
    if first.startswith("regex parse error"):
        reason = _regex_reason(error)
        at = _where(schema, lambda key, value: key == "pattern" and isinstance(value, str) and value in error)
        return f"invalid JSON Schema at {at or '/'}: the pattern is not a valid regex: {reason}"
    pointer = re.match(r"Pointer '(.*)' does not exist", first)
    if pointer:
        at = _where(schema, lambda key, value: key == "$ref" and isinstance(value, str) and value.endswith(pointer[1]))
        return f"invalid JSON Schema at {at or '/'}: $ref {pointer[1]!r} points to nothing in the schema"
    return f"invalid JSON Schema: {first}"


# ---- tokenizers and compiled matchers --------------------------------------------------------------------------


class _Compiled:
    """One tokenizer's llguidance tokenizer and its compiled grammars (a fresh matcher each, to copy per row)."""

    def __init__(self, tokenizer: LLTokenizer):
        self.tokenizer = tokenizer
        self.matchers: OrderedDict[str, LLMatcher] = OrderedDict()


#: per (tokenizer object, EOS ids): the llguidance tokenizer and compiled grammars; weakly keyed by the tokenizer
_CACHE: dict[tuple[int, tuple[int, ...]], tuple[Any, _Compiled]] = {}
_LOCK = threading.Lock()
#: compiled grammars kept per tokenizer (least recently used dropped first)
MAX_GRAMMARS = 64


def _ll_tokenizer(tokenizer: Any, eos_token_ids: tuple[int, ...]) -> LLTokenizer:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ValueError(
            f"structured output needs a Hugging Face fast tokenizer (one with a backend_tokenizer); got "
            f"{type(tokenizer).__name__}. Load the model with decoders.load_model or transformers' AutoTokenizer"
        )
    backend = copy(backend)
    backend.no_padding()
    backend.no_truncation()
    return LLTokenizer(backend.to_str(), eos_token=list(eos_token_ids))


def compiled_matcher(grammar: str, tokenizer: Any, eos_token_ids: tuple[int, ...]) -> tuple[LLMatcher, LLTokenizer]:
    """A matcher of ``grammar`` in its start state for ``tokenizer`` (cached: copy it, never advance it), and
    the llguidance tokenizer. The first call for a tokenizer converts its vocabulary (~0.5 s at 49k tokens);
    the first for a grammar compiles it (~1 ms for a small schema)."""
    key = (id(tokenizer), tuple(eos_token_ids))
    with _LOCK:
        held = _CACHE.get(key)
        if held is None or held[0]() is not tokenizer:
            try:
                reference = weakref.ref(tokenizer, lambda _, key=key: _CACHE.pop(key, None))
            except TypeError:  # not weakly referable: keep it alive with the cache
                reference = lambda tokenizer=tokenizer: tokenizer  # noqa: E731
            held = _CACHE[key] = (reference, _Compiled(_ll_tokenizer(tokenizer, eos_token_ids)))
        compiled = held[1]
        matcher = compiled.matchers.get(grammar)
        if matcher is None:
            matcher = LLMatcher(compiled.tokenizer, grammar, log_level=0)
            if matcher.is_error():
                raise GrammarError(f"the grammar does not compile for this tokenizer: {matcher.get_error().splitlines()[0]}")
            compiled.matchers[grammar] = matcher
            if len(compiled.matchers) > MAX_GRAMMARS:
                compiled.matchers.popitem(last=False)
        else:
            compiled.matchers.move_to_end(grammar)
        return matcher, compiled.tokenizer
