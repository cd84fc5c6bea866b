"""Grammars for llguidance: from a JSON Schema, a regex or a Lark grammar, checked with errors that say where.

Checking needs no tokenizer (it runs when a strategy is validated); compiling for a tokenizer happens once per
(grammar, tokenizer) and is cached for every later generation (:func:`compiled_matcher`).
"""

from __future__ import annotations

import json
import re
import threading
import warnings
import weakref
from collections import OrderedDict
from collections.abc import Iterator
from copy import copy, deepcopy
from functools import lru_cache
from itertools import pairwise
from typing import Any

import numpy as np
from llguidance import LLMatcher, LLTokenizer


class GrammarError(ValueError):
    """A JSON Schema, regex or grammar that llguidance cannot use; the message says what and where."""


class SchemaWarning(UserWarning):
    """``lenient=true`` made llguidance ignore parts of a JSON Schema: the output is not checked against them."""


# ---- JSON options ----------------------------------------------------------------------------------------------

#: JSON's whitespace (RFC 8259): space, tab, line feed, carriage return
JSON_WHITESPACE = r"[\x20\x09\x0A\x0D]"


def json_options(
    whitespace_flexible: bool = False,
    *,
    whitespace_pattern: str | None = None,
    item_separator: str = ",",
    key_separator: str = ":",
    coerce_one_of: bool = False,
    lenient: bool = False,
) -> dict[str, Any]:
    """llguidance's JSON options (its ``x-guidance`` keys), every one given, so that an ``x-guidance`` inside the
    schema cannot change them. Default: compact JSON (small models may loop on whitespace), strict schema."""
    return {
        "whitespace_flexible": whitespace_flexible, "whitespace_pattern": whitespace_pattern,
        "item_separator": item_separator, "key_separator": key_separator,
        "coerce_one_of": coerce_one_of or lenient, "lenient": lenient,
    }  # fmt: skip


#: per option: the regex of the text JSON allows in its place, and that text in words
_OPTION_TEXT = {
    "whitespace_pattern": (f"{JSON_WHITESPACE}*", "JSON whitespace (space, tab, LF, CR)"),
    "item_separator": (f"{JSON_WHITESPACE}*,{JSON_WHITESPACE}*", "one ',' with only JSON whitespace (space, tab, LF, CR) around it"),
    "key_separator": (f"{JSON_WHITESPACE}*:{JSON_WHITESPACE}*", "one ':' with only JSON whitespace (space, tab, LF, CR) around it"),
}  # fmt: skip


@lru_cache(maxsize=128)
def check_json_option(name: str, pattern: str) -> str:
    """``pattern`` when it is a regex llguidance can use as the JSON option ``name`` (``whitespace_pattern``,
    ``item_separator``, ``key_separator``) and matches nothing JSON does not allow there; else GrammarError."""
    error = LLMatcher.validate_grammar(LLMatcher.grammar_from_regex(pattern))
    if error:
        raise GrammarError(regex_message(pattern, error))
    allowed, said = _OPTION_TEXT[name]
    example = _example_outside(pattern, allowed)
    if example is not None:
        shown = "the empty string" if example == "" else repr(example)
        spaces = " (\\s matches more than JSON whitespace: write [ \\t\\n\\r])" if "\\s" in pattern else ""
        raise GrammarError(
            f"{pattern!r} can match {shown}, which is not {said}: the output would not be JSON. Give a regex of "
            f"such text only, e.g. {_OPTION_EXAMPLE[name]!r}{spaces}"
        )
    return pattern


_OPTION_EXAMPLE = {"whitespace_pattern": "[ \\n]{0,2}", "item_separator": ", ?", "key_separator": ": ?"}


@lru_cache(maxsize=1)
def _byte_tokenizer() -> LLTokenizer:
    """An llguidance tokenizer whose tokens are the 256 bytes (and an EOS): to ask what a regex can match."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from tokenizers import decoders as token_decoders

    vocab = {char: index for index, char in enumerate(sorted(pre_tokenizers.ByteLevel.alphabet()))}
    vocab["<eos>"] = len(vocab)
    tokenizer = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = token_decoders.ByteLevel()
    tokenizer.add_special_tokens(["<eos>"])
    return LLTokenizer(tokenizer.to_str(), eos_token=vocab["<eos>"])


def _example_outside(pattern: str, allowed: str, steps: int = 24) -> str | None:
    """A text that ``pattern`` matches and ``allowed`` does not (None when there is none): llguidance intersects
    the two as lexemes; from the start, the lowest allowed byte is taken until the intersection accepts."""
    escaped = re.sub(r"(\\.)|/", lambda m: m[1] or "\\/", pattern)  # a / ends a Lark /regex/
    tokenizer = _byte_tokenizer()
    matcher = LLMatcher(tokenizer, f"start: X\nX: /{escaped}/ & ~/{allowed}/", log_level=0)
    written = b""
    for _ in range(steps):
        mask = np.frombuffer(matcher.compute_bitmask(), dtype=np.uint8)  # puts an empty intersection in error
        if matcher.is_error():
            break
        if matcher.is_accepting():
            return written.decode("utf-8", "replace")
        allowed_ids = [
            int(i) for i in np.flatnonzero(np.unpackbits(mask, bitorder="little")) if i != tokenizer.eos_token
        ]
        if not allowed_ids:
            break
        written += tokenizer.decode_bytes(allowed_ids[:1])
        matcher.consume_token(allowed_ids[0])
    return written.decode("utf-8", "replace") if written else None  # a prefix of such a text, or none at all


# ---- checking and caching ------------------------------------------------------------------------------------


@lru_cache(maxsize=256)
def _checked(source: str, text: str, options: str = "") -> tuple[str, tuple[str, ...]]:
    """The llguidance grammar for ``text`` of kind ``source`` ("json_schema" with its ``options`` as JSON, "regex",
    "grammar"), checked, and the warnings of a lenient schema; raises :class:`GrammarError`."""
    if source == "json_schema":
        schema, overrides = json.loads(text), json.loads(options)
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=overrides)
        failed, messages = LLMatcher.validate_grammar_with_warnings(grammar)
        if failed:
            raise GrammarError(schema_error(schema, messages[0], overrides))
        ignored = [m for m in messages if overrides["lenient"] and not m.startswith("oneOf not fully supported")]
        return grammar, tuple(ignored)
    if source == "regex":
        grammar = LLMatcher.grammar_from_regex(text)
        error = LLMatcher.validate_grammar(grammar)
        if error:
            raise GrammarError(regex_message(text, error))
        return grammar, ()
    grammar = LLMatcher.grammar_from_lark(text)
    error = LLMatcher.validate_grammar(grammar)
    if error:
        raise GrammarError(lark_error(text, error))
    return grammar, ()


def json_schema_grammar(schema: dict[str, Any], whitespace_flexible: bool = False, **options: Any) -> str:
    """The llguidance grammar of a JSON Schema. ``options`` are :func:`json_options`' keywords (their regexes
    checked by :func:`check_json_option`). Raises :class:`GrammarError` naming the schema location; warns
    (:class:`SchemaWarning`) naming what ``lenient=True`` ignores."""
    chosen = json_options(whitespace_flexible, **options)
    for name in _OPTION_TEXT:
        if chosen[name] is not None:
            try:
                check_json_option(name, chosen[name])
            except GrammarError as exc:
                raise GrammarError(f"{name} {exc}") from None
    grammar, ignored = _checked("json_schema", json.dumps(schema), json.dumps(chosen, sort_keys=True))
    if ignored:
        warnings.warn(SchemaWarning(lenient_message(schema, ignored)), stacklevel=2)
    return grammar


def regex_grammar(regex: str) -> str:
    """The llguidance grammar of a regex that the whole output must match."""
    return _checked("regex", regex)[0]


def lark_grammar(grammar: str) -> str:
    """The llguidance grammar of a Lark grammar (llguidance's dialect: ``start`` is the top rule)."""
    return _checked("grammar", grammar)[0]


# ---- regex and grammar error messages --------------------------------------------------------------------------

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


def regex_message(regex: str, error: str) -> str:
    """``unsupported regex …`` (look-around, back-references: valid elsewhere, not in llguidance's Rust regex
    engine) or ``invalid regex …``, with the reason and the character it is at."""
    reason = _regex_reason(error)
    if "not supported" in reason:
        return (
            f"unsupported regex {regex!r}: {reason}{_regex_position(error)}: llguidance's regex engine (Rust regex "
            "syntax) has no look-around and no back-references; rewrite the regex without them"
        )
    return f"invalid regex {regex!r}: {reason}{_regex_position(error)}"


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


def _regex_text(error: str) -> str | None:
    """The regex quoted in llguidance's ``regex parse error`` (the line above the caret)."""
    for above, line in pairwise(error.splitlines()):
        if line.strip().startswith("^") and above.startswith("    "):
            return above[4:]
    return None


# ---- JSON Schema: walking it by keyword ------------------------------------------------------------------------

#: keywords whose value is one schema, a list of schemas, or a map from names to schemas
_ONE_SCHEMA = {
    "items", "additionalItems", "additionalProperties", "not", "if", "then", "else", "contains", "propertyNames",
    "unevaluatedItems", "unevaluatedProperties", "contentSchema",
}  # fmt: skip
_SCHEMA_LISTS = {"allOf", "anyOf", "oneOf", "prefixItems", "items"}
_SCHEMA_MAPS = {"properties", "patternProperties", "$defs", "definitions", "dependentSchemas", "dependencies"}
_DEFINITIONS = {"$defs", "definitions"}


def _escape(key: str) -> str:
    return str(key).replace("~", "~0").replace("/", "~1")


def _children(key: str, value: Any, at: str) -> Iterator[tuple[str, Any]]:
    """The schemas inside keyword ``key`` (at pointer ``at``): ``(pointer, schema)``."""
    if key in _SCHEMA_MAPS and isinstance(value, dict):
        for name, schema in value.items():
            if isinstance(schema, (dict, bool)):
                yield f"{at}/{_escape(name)}", schema
    elif key in _SCHEMA_LISTS and isinstance(value, list):
        for index, schema in enumerate(value):
            if isinstance(schema, (dict, bool)):
                yield f"{at}/{index}", schema
    elif key in _ONE_SCHEMA and isinstance(value, (dict, bool)):
        yield at, value


def _subschemas(schema: Any, path: str) -> Iterator[tuple[str, Any]]:
    """The schemas directly inside ``schema`` (at ``path``), in document order."""
    if isinstance(schema, dict):
        for key, value in schema.items():
            yield from _children(key, value, f"{path}/{_escape(key)}")


def _keywords(schema: Any, path: str = "") -> Iterator[tuple[str, str, Any]]:
    """Every keyword of every schema in ``schema``: ``(JSON pointer of the keyword, keyword, value)``, depth first
    in document order. Property names, enum values and defaults are not keywords: ``properties: {"not": …}``
    yields ``/properties`` and the keywords inside ``/properties/not``, never a keyword ``not``."""
    if not isinstance(schema, dict):
        return
    for key, value in schema.items():
        at = f"{path}/{_escape(key)}"
        yield at, key, value
        for inner, child in _children(key, value, at):
            yield from _keywords(child, inner)


def _parts(pointer: str) -> list[str]:
    return [part.replace("~1", "/").replace("~0", "~") for part in pointer.split("/")[1:]]


def _at(schema: Any, pointer: str) -> Any:
    node = schema
    for part in _parts(pointer):
        node = node[int(part)] if isinstance(node, list) else node[part]
    return node


def _edited(schema: Any, pointers: list[str], value: Any = None) -> Any:
    """A copy of ``schema`` with the members at ``pointers`` removed (or, given ``value``, replaced by it)."""
    copied = deepcopy(schema)
    for pointer in sorted(pointers, key=len, reverse=True):
        *parents, last = _parts(pointer)
        try:
            parent = _at(copied, "".join(f"/{_escape(p)}" for p in parents))
            if isinstance(parent, list):
                parent[int(last)] = value if value is not None else {}
            elif value is not None:
                parent[last] = value
            else:
                del parent[last]
        except (KeyError, IndexError, ValueError, TypeError):
            continue
    return copied


def _pointer(path: str) -> str:
    return path or "/"


# ---- JSON Schema: finding where llguidance's error is ----------------------------------------------------------

#: at most this many recompilations to find where an error is (each ~1 ms for a small schema)
MAX_TRIALS = 64


class _Spent(Exception):
    """The recompilations allowed to locate an error (MAX_TRIALS) are spent: stop where the search is."""


class _Trials:
    """Recompiles variants of a schema with the same options and tells whether llguidance's error is still there."""

    def __init__(self, options: dict[str, Any], error: str):
        self.options, self.error, self.left = options, error.strip(), MAX_TRIALS

    def same(self, schema: Any) -> bool:
        """Whether ``schema`` gives the very error being located (raises _Spent once the trials are spent)."""
        if self.left <= 0:
            raise _Spent
        self.left -= 1
        grammar = LLMatcher.grammar_from_json_schema(schema, overrides=self.options)
        return LLMatcher.validate_grammar(grammar).strip() == self.error

    def culprit(self, schema: Any, candidates: list[str]) -> str | None:
        """Of the candidate keywords (JSON pointers), the one the error comes from: the first that gives it with
        the other candidates removed (the first candidate when none does on its own)."""
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        try:
            for pointer in candidates:
                if self.same(_edited(schema, [p for p in candidates if p != pointer])):
                    return pointer
        except _Spent:
            pass
        return candidates[0]

    def locate(self, schema: Any) -> str:
        """The deepest place the error comes from, for messages that name none: go down into the one subschema
        (a definition first) whose replacement by ``{}`` makes the error go; then, in that schema, the keyword
        whose removal does. Where two subschemas clash (an ``allOf`` of a string and an integer), it stops above;
        when the trials are spent, where it has got to."""
        path, node = "", schema
        try:
            while isinstance(node, dict):
                children = list(_subschemas(node, path))
                definitions = [c for c in children if _parts(c[0])[-2:-1] and _parts(c[0])[-2] in _DEFINITIONS]
                inside = next((c for c in definitions if not self.same(_edited(schema, [c[0]], {}))), None)
                if inside is None:
                    cleared = []
                    for child in children:
                        if child not in definitions and not self.same(_edited(schema, [child[0]], {})):
                            cleared.append(child)
                            if len(cleared) > 1:
                                break
                    if len(cleared) != 1:
                        break
                    inside = cleared[0]
                path, node = inside
            for key in node if isinstance(node, dict) else ():
                keyword = f"{path}/{_escape(key)}"
                if not self.same(_edited(schema, [keyword])):
                    return keyword
        except _Spent:
            pass
        return _pointer(path)


STANDARD_FORMATS = (
    "date-time", "date", "time", "duration", "email", "idn-email", "hostname", "idn-hostname", "ipv4", "ipv6", "uri",
    "uri-reference", "iri", "iri-reference", "uuid", "uri-template", "json-pointer", "relative-json-pointer", "regex",
)  # fmt: skip
_TYPES = "array, boolean, integer, null, number, object, string"
_LENIENT = "or set lenient=true to ignore {it} (the output is then not checked against {it})"


@lru_cache(maxsize=1)
def implemented_formats() -> tuple[str, ...]:
    """The JSON Schema formats (draft 2020-12) that the installed llguidance enforces."""
    return tuple(
        name for name in STANDARD_FORMATS
        if not LLMatcher.validate_grammar(LLMatcher.grammar_from_json_schema({"type": "string", "format": name}))
    )  # fmt: skip


def schema_error(schema: Any, error: str, options: dict[str, Any] | None = None) -> str:
    """llguidance's error about a JSON Schema, said plainly — *invalid* (not JSON Schema), *unsupported* (JSON
    Schema that llguidance does not implement) or *unsatisfiable* — with the JSON pointer of the keyword it is
    about, and what to do. ``options``: the JSON options it was compiled with (:func:`json_options`)."""
    options = json_options() if options is None else options
    trials = _Trials(options, error)
    raw_first = error.lstrip().splitlines()[0] if error.strip() else ""
    first = raw_first.strip()
    keywords = list(_keywords(schema))

    def named(test) -> list[str]:
        return [pointer for pointer, key, value in keywords if test(key, value)]

    unimplemented = re.match(r"Unimplemented keys: (\[.*\])", first)
    if unimplemented:
        found = [
            (key, trials.culprit(schema, named(lambda k, v, key=key: k == key))) for key in json.loads(unimplemented[1])
        ]
        places = " and ".join(f"{key!r} at {at}" if at else repr(key) for key, at in found)
        plural = len(found) > 1
        it = "them" if plural else "it"
        return (
            f"unsupported JSON Schema keyword{'s' if plural else ''} {places}: llguidance does not implement "
            f"{it}; remove {it}, {_LENIENT.format(it=it)}"
        )
    if raw_first.startswith("Unknown format:"):
        name = raw_first.removeprefix("Unknown format:").removeprefix(" ")
        at = trials.culprit(schema, named(lambda k, v: k == "format" and v == name))
        where = f" at {at}" if at else ""
        implemented = ", ".join(implemented_formats())
        if name == "":
            what = f'empty format name ("format": ""){where}: it names no format'
        elif name in STANDARD_FORMATS:
            what = f"unsupported format {name!r}{where}: JSON Schema defines it, but llguidance does not implement it"
        else:
            what = f"unknown format {name!r}{where}: JSON Schema does not define it"
        return (
            f"{what} (llguidance enforces formats, and implements {implemented}); remove it, or set lenient=true "
            "to ignore the formats llguidance lacks (such strings are then not checked against them)"
        )
    if first.startswith("oneOf constraints are not supported"):
        at = trials.culprit(schema, named(lambda k, v: k == "oneOf"))
        return (
            f"unsupported 'oneOf'{f' at {at}' if at else ''}: llguidance enforces oneOf only where it can prove that "
            "no value matches two branches, and cannot here; set coerce_one_of=true to treat it as anyOf (a value "
            "that matches two branches is then accepted), or write anyOf"
        )
    if first.startswith("regex parse error"):
        return _pattern_error(schema, error, trials, keywords)
    bad_type = re.match(r"Invalid type: (.*)", first)
    if bad_type:
        bad = bad_type[1].strip()
        at = trials.culprit(
            schema, named(lambda k, v: k == "type" and (v == bad or (isinstance(v, list) and bad in v)))
        )
        return f"invalid JSON Schema at {at or trials.locate(schema)}: unknown type {bad!r} (the types are {_TYPES})"
    missing = re.match(r"Pointer '(.*)' does not exist", first)
    if missing:
        target = missing[1]
        refs = named(lambda k, v: k == "$ref" and isinstance(v, str) and v.split("#", 1)[-1] == target)
        at = trials.culprit(schema, refs) or trials.locate(schema)
        shown = _at(schema, at) if refs else f"#{target}"
        return f"invalid JSON Schema at {at}: $ref {shown!r} points to nothing in the schema; define it (under $defs) or fix the reference"
    remote = re.match(r"Resource '(.*?)' is not present", first)
    if remote:
        refs = named(lambda k, v: k == "$ref" and isinstance(v, str) and v.split("#", 1)[0] == remote[1])
        at = trials.culprit(schema, refs) or trials.locate(schema)
        return (
            f"unsupported $ref {remote[1]!r} at {at}: it refers outside the schema, and schemas are never fetched; "
            "copy the schema it refers to under $defs and refer to it as '#/$defs/NAME'"
        )
    if first.startswith("min/maxProperties only supported"):
        at = trials.culprit(schema, named(lambda k, v: k in ("minProperties", "maxProperties")))
        key = _parts(at)[-1] if at else "minProperties/maxProperties"
        return (
            f"unsupported {key!r} at {at or trials.locate(schema)}: llguidance implements minProperties and "
            "maxProperties only when every property listed in 'properties' is required; make them required, remove "
            f"the keyword, {_LENIENT.format(it='it')}"
        )
    unsatisfiable = re.match(r"Unsatisfiable schema: (.*)", first)
    if unsatisfiable:
        return f"unsatisfiable JSON Schema at {trials.locate(schema)}: no value can match it ({unsatisfiable[1]}); fix the keywords that conflict"
    quoted = re.search(r"for '([^']+)'", first)  # Expected positive integer for 'minLength', got "x"
    if quoted:
        at = trials.culprit(schema, named(lambda k, v: k == quoted[1]))
        if at:
            return f"invalid JSON Schema at {at}: {first}"
    return f"llguidance cannot compile the JSON Schema at {trials.locate(schema)}: {first}"


def _pattern_error(schema: Any, error: str, trials: _Trials, keywords: list[tuple[str, str, Any]]) -> str:
    """A ``pattern`` (or ``patternProperties`` name) that is not a regex llguidance's engine takes."""
    quoted = _regex_text(error)
    candidates = []
    for pointer, key, value in keywords:
        if key == "pattern" and isinstance(value, str):
            candidates.append((pointer, value))
        elif key == "patternProperties" and isinstance(value, dict):
            candidates.extend((f"{pointer}/{_escape(name)}", name) for name in value)
    candidates.sort(key=lambda c: c[1] != quoted)  # the regex the message quotes first (a stable sort)
    at = trials.culprit(schema, [pointer for pointer, _ in candidates])
    regex = dict(candidates).get(at, quoted or "")
    where = f"{'patternProperties name' if at and _parts(at)[-2:-1] == ['patternProperties'] else 'pattern'}"
    message = regex_message(regex, error).replace(f"regex {regex!r}", f"regex in {where} {regex!r}", 1)
    verdict, rest = message.split(": ", 1)
    return f"{verdict} at {at or trials.locate(schema)}: {rest}"


def lenient_message(schema: Any, ignored: tuple[str, ...]) -> str:
    """What ``lenient=true`` made llguidance ignore in ``schema`` (from its warnings), with where each is."""
    keywords = list(_keywords(schema))
    parts = []
    for warning in ignored:
        first = warning.splitlines()[0] if warning else ""
        unimplemented = re.match(r"Unimplemented keys: (\[.*\])", first)
        if unimplemented:
            for key in json.loads(unimplemented[1]):
                places = [p for p, k, _ in keywords if k == key]
                parts.append(f"keyword {key!r}{_places(places)}")
        elif first.startswith("Unknown format:"):
            name = first.removeprefix("Unknown format:").removeprefix(" ")
            places = [p for p, k, v in keywords if k == "format" and v == name]
            parts.append(f"format {name!r}{_places(places)}")
        elif first.startswith("min/maxProperties"):
            places = [p for p, k, _ in keywords if k in ("minProperties", "maxProperties")]
            parts.append(
                f"minProperties/maxProperties{_places(places)}, which it implements only when every property is required"
            )
        else:
            parts.append(first)
    return (
        f"json_schema with lenient=true: llguidance ignores {'; '.join(parts)}; the output is not checked against them"
    )


def _places(pointers: list[str]) -> str:
    if not pointers:
        return ""
    shown = ", ".join(pointers[:3]) + (f" and {len(pointers) - 3} more" if len(pointers) > 3 else "")
    return f" (at {shown})"


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
