"""Structured output on the real embedded model (SmolLM2-135M-Instruct), with its chat template."""

import json

import jsonschema
import pytest

import decoders

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


@pytest.mark.embedded
def test_person_records_from_the_embedded_model():
    strategy = {
        "processors": [{"kind": "temperature", "temperature": 0.7}, {"kind": "top_p", "top_p": 0.9},
                       {"kind": "json_schema", "json_schema": PERSON}],
        "selector": {"kind": "sample"},
    }  # fmt: skip
    prompt = "Invent a person and describe them as a JSON object with name, age, email, city and hobbies."
    results = decoders.generate([prompt] * 20, strategy, chat=True, seed=list(range(20)), max_new_tokens=128)
    complete = [r for r in results if r.finish_reason == "eos"]
    for result in complete:
        jsonschema.validate(json.loads(result.text), PERSON)
    assert len(complete) >= 15  # most end within 128 tokens (20 of 20 when measured)
    assert all(r.finish_reason == "length" for r in results if r not in complete)
