"""Real-world schemas: llguidance's JSON options on the json_schema kind, and refusals that say what and where."""

import json
import re
import warnings

import jsonschema
import pytest
import torch
from pydantic import ValidationError

import decoders
from decoders_structured import SchemaWarning

EOS = 0


def strategy(*processors, selector="greedy") -> decoders.Strategy:
    return decoders.Strategy.model_validate({"processors": list(processors), "selector": {"kind": selector}})


def refusal(constraint: dict) -> str:
    """The one-line message a user sees for a strategy that is refused (as ``decoders`` prints it)."""
    with pytest.raises(ValidationError) as caught:
        strategy(constraint)
    return decoders.errors.validation_message(caught.value)


def json_constraint(schema: dict, **options) -> dict:
    return {"kind": "json_schema", "json_schema": schema, **options}


# ---- the options: fields of the json_schema config, validated like the others -------------------------------------

ONE_OF = {"type": "object", "properties": {"n": {"oneOf": [{"type": "number"}, {"type": "integer", "minimum": 0}]}},
          "required": ["n"], "additionalProperties": False}  # fmt: skip


def test_the_options_are_config_fields_with_defaults():
    config = strategy(json_constraint({"type": "integer"})).processors[0]
    assert config.model_dump() == {
        "kind": "json_schema", "json_schema": {"type": "integer"}, "whitespace_flexible": False, "whitespace_pattern": None,
        "item_separator": ",", "key_separator": ":", "coerce_one_of": False, "lenient": False,
    }  # fmt: skip


@pytest.mark.parametrize(
    "options, message",
    [
        ({"coerce_one_of": "sometimes"}, r"json_schema\.coerce_one_of: Input should be a valid boolean"),
        ({"lenient": 2}, r"json_schema\.lenient: Input should be a valid boolean"),
        ({"coerce_oneof": True}, r"json_schema\.coerce_oneof: Extra inputs are not permitted"),
        ({"item_separator": ""}, r"json_schema\.item_separator: String should have at least 1 character"),
        ({"item_separator": "(,"}, r"json_schema\.item_separator: invalid regex '\(,': unclosed group at character 1"),
        ({"key_separator": "(?<= ):"}, r"json_schema\.key_separator: unsupported regex '\(\?<= \):': look-around"),
        ({"item_separator": ";"}, r"json_schema\.item_separator: ';' can match ';', which is not one ',' with only JSON whitespace"),
        ({"item_separator": ",?"}, r"json_schema\.item_separator: ',\?' can match the empty string, which is not one ','"),
        ({"key_separator": r"\s*:\s*"}, r"json_schema\.key_separator: '\\\\s\*:\\\\s\*' can match '.+', which is not one ':'.*\\s matches more than JSON whitespace"),
        ({"whitespace_pattern": "[ _]*"}, r"json_schema\.whitespace_pattern: '\[ _\]\*' can match '_', which is not JSON whitespace"),
        ({"whitespace_pattern": " ", "whitespace_flexible": True}, r"json_schema\.whitespace_pattern: whitespace_pattern replaces whitespace_flexible"),
        ({"lenient": True, "coerce_one_of": False}, r"json_schema\.coerce_one_of: lenient=true treats oneOf as anyOf"),
    ],
)  # fmt: skip
def test_bad_options_are_refused_naming_the_field(options, message):
    assert re.search(message, refusal(json_constraint({"type": "integer"}, **options)))


def test_lenient_implies_coerce_one_of_and_round_trips():
    config = strategy(json_constraint(ONE_OF, lenient=True)).processors[0]
    assert config.coerce_one_of is True  # what llguidance does with lenient, shown in the config
    again = strategy(config.model_dump()).processors[0]
    assert again == config


def allowed_after(chain, tokenizer, text: str) -> set[str]:
    """The token texts the constraint allows after ``text`` (EOS shown as '<eos>')."""
    chain.reset(decoders.DecodeContext(eos_token_ids=(EOS,), tokenizer=tokenizer))
    for token in tokenizer.encode(text, add_special_tokens=False):
        chain.accept(torch.tensor([token]))
    scores = chain.process(torch.zeros(1, 0, dtype=torch.long), torch.zeros(1, len(tokenizer)))
    return {
        "<eos>" if i == EOS else tokenizer.decode([i]) for i in torch.isfinite(scores[0]).nonzero().flatten().tolist()
    }


def test_coerce_one_of_accepts_a_value_that_matches_two_branches(tiny_model):
    """What coerce_one_of gives up: oneOf becomes anyOf, so 3 (a number and a non-negative integer) completes."""
    _, tokenizer = tiny_model
    assert "coerce_one_of=true" in refusal(json_constraint(ONE_OF))
    chain = strategy(json_constraint(ONE_OF, coerce_one_of=True)).build()
    assert "<eos>" in allowed_after(chain, tokenizer, '{"n":3}')
    with pytest.raises(jsonschema.ValidationError, match="is valid under each of"):
        jsonschema.validate({"n": 3}, ONE_OF)  # the output a real oneOf refuses


def test_lenient_ignores_what_llguidance_lacks_and_warns_where(tiny_model):
    """What lenient gives up: the ignored keyword and format are not enforced; the warning names them and where."""
    schema = {"type": "object", "properties": {"tags": {"type": "array", "items": {"enum": ["a", "b"]}, "uniqueItems": True, "maxItems": 3},
              "link": {"type": "string", "format": "uri-reference", "maxLength": 8}}, "required": ["tags", "link"],
              "additionalProperties": False}  # fmt: skip
    with pytest.warns(SchemaWarning) as caught:
        lenient = strategy(json_constraint(schema, lenient=True))
    chain = lenient.build()
    message = str(caught[0].message)
    assert "keyword 'uniqueItems' (at /properties/tags/uniqueItems)" in message
    assert "format 'uri-reference' (at /properties/link/format)" in message
    # complete with a repeated item (uniqueItems) and a link that is no uri-reference (a space): neither is checked
    assert "<eos>" in allowed_after(chain, tiny_model[1], '{"tags":["a","a"],"link":"a b"}')
    result = decoders.generate("The", lenient, model=tiny_model, max_new_tokens=40)
    assert result.finish_reason == "eos"
    relaxed = json.loads(json.dumps(schema).replace('"uniqueItems": true, ', ""))
    jsonschema.validate(json.loads(result.text), relaxed)


def test_lenient_without_anything_to_ignore_is_silent():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        strategy(json_constraint({"type": "object", "properties": {"a": {"type": "string", "format": "date"}}}, lenient=True))


def test_separators_and_whitespace_shape_the_output(tiny_model):
    schema = {"type": "object", "properties": {"a": {"type": "integer", "minimum": 0, "maximum": 99},
              "b": {"type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 9}, "minItems": 2, "maxItems": 3}},
              "required": ["a", "b"], "additionalProperties": False}  # fmt: skip
    spaced = json_constraint(schema, item_separator=", ", key_separator=": ")
    result = decoders.generate("The", strategy(spaced), model=tiny_model, max_new_tokens=40)
    assert result.finish_reason == "eos"
    assert re.fullmatch(r'\{"a": \d+, "b": \[\d(, \d){1,2}\]\}', result.text), result.text
    jsonschema.validate(json.loads(result.text), schema)
    _, tokenizer = tiny_model
    assert allowed_after(strategy(spaced).build(), tokenizer, '{"a": 1,') == {" "}  # the separator's space is required
    one_space = strategy(json_constraint(schema, whitespace_pattern="[ ]")).build()
    assert " " in allowed_after(one_space, tokenizer, "{")
    assert " " not in allowed_after(one_space, tokenizer, "{ ")  # one space at most between two JSON tokens
    assert " " not in allowed_after(strategy(json_constraint(schema)).build(), tokenizer, "{")  # compact by default


def test_an_x_guidance_key_in_the_schema_does_not_override_the_config(tiny_model):
    _, tokenizer = tiny_model
    schema = {"x-guidance": {"whitespace_flexible": True, "lenient": True}, "type": "array", "items": {"type": "integer"}}
    assert " " not in allowed_after(strategy(json_constraint(schema)).build(), tokenizer, "[")
    assert "'uniqueItems'" in refusal(json_constraint({**schema, "uniqueItems": True}))


# ---- refusals: the truth and the place ------------------------------------------------------------------------------
# Each case: a small schema, what the message must say, and what it must not (the message before this change).


REFUSALS = [
    pytest.param({"type": "object", "properties": {"link": {"type": "string", "format": "uri-reference"}}},
                 r"unsupported format 'uri-reference' at /properties/link/format: JSON Schema defines it, but llguidance does not "
                 r"implement it \(llguidance enforces formats, and implements date-time, .*uuid\); remove it, or set lenient=true",
                 "invalid JSON Schema at /properties/link: Unknown format", id="format-uri-reference"),
    pytest.param({"type": "string", "format": "regex"}, r"unsupported format 'regex' at /format", "invalid JSON Schema", id="format-regex"),
    pytest.param({"properties": {"home": {"type": "string", "format": "iri"}}}, r"unsupported format 'iri' at /properties/home/format",
                 "invalid JSON Schema", id="format-iri"),
    pytest.param({"properties": {"a": {"type": "string", "format": ""}}},
                 r'empty format name \("format": ""\) at /properties/a/format: it names no format', "Unknown format:", id="format-empty"),
    pytest.param({"properties": {"a": {"type": "string", "format": "zip-code"}}},
                 r"unknown format 'zip-code' at /properties/a/format: JSON Schema does not define it", "invalid JSON Schema", id="format-unknown"),
    pytest.param({"properties": {"code": {"type": "array", "items": {"type": "string", "pattern": "^(?!00)[0-9]{5}$"}}}},
                 r"unsupported regex in pattern '\^\(\?!00\)\[0-9\]\{5\}\$' at /properties/code/items/pattern: look-around, including "
                 r"look-ahead and look-behind, is not supported at character 2 \('\('\): .*no look-around",
                 "not a valid regex", id="pattern-look-ahead-deep"),
    pytest.param({"properties": {"a": {"type": "string", "pattern": "(?<=x)y"}}},
                 r"unsupported regex in pattern '\(\?<=x\)y' at /properties/a/pattern: look-around", "invalid", id="pattern-look-behind"),
    pytest.param({"properties": {"twice": {"type": "string", "pattern": "(a)\\1"}}},
                 r"unsupported regex in pattern '\(a\)\\\\1' at /properties/twice/pattern: backreferences are not supported", "invalid",
                 id="pattern-back-reference"),
    pytest.param({"properties": {"a": {"type": "string", "pattern": "a"}, "b": {"type": "string", "pattern": "(?=a)"}}},
                 r"at /properties/b/pattern:", "at /properties/a", id="pattern-after-one-it-contains"),
    pytest.param({"properties": {"a": {"properties": {"b": {"type": "string", "pattern": "[a-"}}}}},
                 r"invalid regex in pattern '\[a-' at /properties/a/properties/b/pattern: unclosed character class at character 1",
                 "at /:", id="pattern-invalid-deep"),
    pytest.param({"type": "object", "patternProperties": {"^(?!_)": {"type": "string"}}},
                 r"unsupported regex in patternProperties name '\^\(\?!_\)' at /patternProperties/\^\(\?!_\): look-around", "at /:",
                 id="patternProperties-name"),
    pytest.param({"type": "object", "properties": {"dependencies": {"type": "array"}, "name": {"type": "string"}},
                  "dependencies": {"name": ["dependencies"]}},
                 r"unsupported JSON Schema keyword 'dependencies' at /dependencies: llguidance does not implement it; remove it, or "
                 r"set lenient=true to ignore it", "at /properties", id="dependencies-not-the-property"),
    pytest.param({"properties": {"x": {"not": {"type": "string"}}}}, r"unsupported JSON Schema keyword 'not' at /properties/x/not",
                 "feature", id="not"),
    pytest.param({"if": {"required": ["a"]}, "then": {"required": ["b"]}},
                 r"unsupported JSON Schema keywords 'if' at /if and 'then' at /then: llguidance does not implement them", "feature",
                 id="if-then"),
    pytest.param({"type": "object", "properties": {"n": {"oneOf": [{"type": "number"}, {"type": "integer"}]}}},
                 r"unsupported 'oneOf' at /properties/n/oneOf: .*set coerce_one_of=true to treat it as anyOf \(a value that matches two "
                 r"branches is then accepted\)", "x-guidance|Enable 'coerce_one_of' option", id="oneOf"),
    pytest.param({"type": "object", "properties": {"a": {"type": "string"}}, "maxProperties": 3},
                 r"unsupported 'maxProperties' at /maxProperties: llguidance implements minProperties and maxProperties only when "
                 r"every property listed in 'properties' is required", "invalid JSON Schema:", id="maxProperties"),
    pytest.param({"allOf": [{"type": "string"}, {"type": "integer"}]},
                 r"unsatisfiable JSON Schema at /allOf: no value can match it \(incompatible types\)", "invalid JSON Schema:",
                 id="unsatisfiable"),
    pytest.param({"$defs": {"id": {"allOf": [{"type": "string"}, {"type": "integer"}]}}, "properties": {"a": {"$ref": "#/$defs/id"}}},
                 r"unsatisfiable JSON Schema at /\$defs/id/allOf", "invalid JSON Schema:", id="unsatisfiable-in-a-definition"),
    pytest.param({"properties": {"a": {"$ref": "https://example.com/address.json"}}},
                 r"unsupported \$ref 'https://example.com/address.json' at /properties/a/\$ref: it refers outside the schema, and "
                 r"schemas are never fetched", "invalid JSON Schema:", id="remote-ref"),
    pytest.param({"properties": {"a": {"$ref": "#/$defs/missing"}}},
                 r"invalid JSON Schema at /properties/a/\$ref: \$ref '#/\$defs/missing' points to nothing", "unsupported", id="missing-ref"),
    pytest.param({"properties": {"a": {"type": "string", "minLength": "3"}}},
                 r"invalid JSON Schema at /properties/a/minLength: Expected positive integer for 'minLength'", "invalid JSON Schema:",
                 id="bad-keyword-value"),
    pytest.param({"type": "object", "properties": {"age": {"type": "intger"}}},
                 r"invalid JSON Schema at /properties/age/type: unknown type 'intger' \(the types are array, boolean", "unsupported",
                 id="bad-type"),
]  # fmt: skip


@pytest.mark.parametrize("schema, says, not_says", REFUSALS)
def test_a_refused_schema_says_what_and_where(schema, says, not_says):
    message = refusal(json_constraint(schema))
    assert message.startswith("processors.0.json_schema.json_schema: ")
    assert re.search(says, message), message
    assert not re.search(not_says, message), message


def test_the_same_refusals_reach_generate_before_a_model_loads(tiny_model):
    schema = {"type": "object", "properties": {"home": {"type": "string", "format": "iri"}}}
    with pytest.raises(ValidationError, match="unsupported format 'iri' at /properties/home/format"):
        decoders.generate("The", {"processors": [json_constraint(schema)]}, model=tiny_model, max_new_tokens=4)


def test_a_regex_with_look_around_is_unsupported_not_invalid():
    message = refusal({"kind": "regex", "regex": "(?=a)[a-z]+"})
    assert re.search(r"regex\.regex: unsupported regex '\(\?=a\)\[a-z\]\+': look-around.* at character 1", message), (
        message
    )
    assert "invalid" not in message


def test_the_completion_benchmark_runs(tmp_path, tiny_model_dir):
    """A smoke run of benchmarks/completion.py on the tiny model (no rate is asserted)."""
    import subprocess
    import sys
    from pathlib import Path

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "completion.py"
    output = tmp_path / "completion.json"
    subprocess.run([sys.executable, str(script), "--quick", "--model", str(tiny_model_dir), "--output", str(output)],
                   check=True, capture_output=True)  # fmt: skip
    report = json.loads(output.read_text())
    assert [run["name"] for run in report["runs"]][:3] == ["plain", "repetition_penalty 1.3", "no_repeat_ngram 3"]
    for run in report["runs"]:
        assert run["rows"] == 2 == run["complete"] + run["length"] + run["eos_invalid"] + run["error"]
