"""Property tests: whatever the schema, regex or grammar and the seed, every output that ends with "eos" is valid."""

import json
import re

import jsonschema
import lark
from hypothesis import given, settings
from hypothesis import strategies as st

import decoders

#: the tiny tokenizer's ids of '"', '}', ']', ',' and EOS: boosted so that a random model closes what it opens
CLOSERS = {2: 4.0, 93: 4.0, 61: 4.0, 12: 4.0, 0: 4.0}
PROMPTS = ["Once", "The quick brown fox", "Decoding", "a"]


def _sampled(constraint: dict, closers: bool = True) -> dict:
    bias = [{"kind": "logit_bias", "logit_bias": CLOSERS}] if closers else []
    return {"processors": [*bias, {"kind": "temperature", "temperature": 1.0}, constraint], "selector": {"kind": "sample"}}


NAMES = st.text(alphabet="abcdefghij_", min_size=1, max_size=6)


def _leaf() -> st.SearchStrategy:
    string = st.builds(
        lambda bound: {"type": "string", **({"maxLength": bound} if bound is not None else {})},
        st.one_of(st.none(), st.integers(0, 5)),
    )
    integer = st.builds(
        lambda low, span: {"type": "integer", **({"minimum": low, "maximum": low + span} if low is not None else {})},
        st.one_of(st.none(), st.integers(-50, 50)), st.integers(0, 100),
    )  # fmt: skip
    number = st.just({"type": "number"})
    boolean = st.just({"type": "boolean"})
    enum = st.lists(st.one_of(st.text(alphabet="xyz ", max_size=4), st.integers(-3, 3), st.booleans()), min_size=1, max_size=4, unique=True).map(
        lambda values: {"enum": values}
    )
    return st.one_of(string, integer, number, boolean, enum)


def _object(children: st.SearchStrategy) -> st.SearchStrategy:
    def make(properties: dict, required: list[bool], closed: bool) -> dict:
        names = list(properties)
        schema = {"type": "object", "properties": properties, "required": [n for n, r in zip(names, required) if r]}
        if closed:
            schema["additionalProperties"] = False
        return schema

    return st.dictionaries(NAMES, children, min_size=1, max_size=4).flatmap(
        lambda properties: st.builds(make, st.just(properties), st.lists(st.booleans(), min_size=len(properties), max_size=len(properties)), st.booleans())
    )


def _array(children: st.SearchStrategy) -> st.SearchStrategy:
    return st.builds(
        lambda items, most: {"type": "array", "items": items, **({"maxItems": most} if most is not None else {})},
        children, st.one_of(st.none(), st.integers(0, 3)),
    )  # fmt: skip


#: objects with string/integer/number/boolean/enum/array fields, nested, required or optional
SCHEMAS = _object(st.recursive(_leaf(), lambda inner: st.one_of(_object(inner), _array(inner)), max_leaves=6))


@settings(max_examples=25, deadline=None)
@given(schema=SCHEMAS, seed=st.integers(0, 2**32 - 1))
def test_every_eos_output_validates_against_the_schema(tiny_model, schema, seed):
    results = decoders.generate(PROMPTS, _sampled({"kind": "json_schema", "json_schema": schema}), model=tiny_model, seed=seed, max_new_tokens=48)
    for result in results:
        if result.finish_reason == "eos":
            jsonschema.validate(json.loads(result.text), schema)


def test_most_outputs_of_a_fixed_schema_complete(tiny_model):
    """The property test above is not vacuous: with the closers boosted most rows end with EOS."""
    schema = {"type": "object", "properties": {"name": {"type": "string", "maxLength": 5}, "age": {"type": "integer"},
              "tags": {"type": "array", "items": {"enum": ["a", "b"]}}}, "required": ["name", "age"]}  # fmt: skip
    results = decoders.generate(PROMPTS * 4, _sampled({"kind": "json_schema", "json_schema": schema}), model=tiny_model, seed=1, max_new_tokens=48)
    complete = [r for r in results if r.finish_reason == "eos"]
    assert len(complete) >= 12
    for result in complete:
        jsonschema.validate(json.loads(result.text), schema)


PIECES = st.sampled_from(["[a-e]", "[0-9]", "ab", "x", "(ab|cd)", "[a-z]", "q", r"\.", "-"])
QUANTIFIERS = st.sampled_from(["", "", "?", "{1,3}", "{2}", "+", "*"])
REGEXES = st.lists(st.tuples(PIECES, QUANTIFIERS).map("".join), min_size=1, max_size=5).map("".join)


@settings(max_examples=25, deadline=None)
@given(regex=REGEXES, seed=st.integers(0, 2**32 - 1))
def test_every_eos_output_fullmatches_the_regex(tiny_model, regex, seed):
    results = decoders.generate(PROMPTS, _sampled({"kind": "regex", "regex": regex}, closers=False), model=tiny_model, seed=seed, max_new_tokens=24)
    completed = 0
    for result in results:
        if result.finish_reason == "eos":
            completed += 1
            assert re.fullmatch(regex, result.text), (regex, result.text)
    assert completed or "+" in regex or "*" in regex  # bounded regexes always complete within 24 tokens


ARITHMETIC = """
start: expr
expr: term (("+" | "-") term)*
term: factor (("*" | "/") factor)*
factor: NUMBER | "(" expr ")"
NUMBER: /[0-9]{1,3}/
"""
LISTS = """
start: "[" [item ("," item)*] "]"
item: WORD | start
WORD: /[a-z]{1,4}/
"""


@settings(max_examples=15, deadline=None)
@given(grammar=st.sampled_from([ARITHMETIC, LISTS]), seed=st.integers(0, 2**32 - 1))
def test_every_eos_output_parses_with_the_grammar(tiny_model, grammar, seed):
    """Not vacuous: some row of every example ends with EOS (2 to 4 of the 4 rows, over 60 seeds measured)."""
    parser = lark.Lark(grammar, parser="earley")
    results = decoders.generate(PROMPTS, _sampled({"kind": "grammar", "grammar": grammar}), model=tiny_model, seed=seed, max_new_tokens=32)
    complete = [result for result in results if result.finish_reason == "eos"]
    assert complete, [(r.finish_reason, r.text) for r in results]  # no row ended: nothing would be checked
    for result in complete:
        parser.parse(result.text)
