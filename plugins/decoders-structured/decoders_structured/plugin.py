"""The ``structured`` plugin: the json_schema, regex and grammar constraint kinds, and their ``decoders generate``
options (--json-schema, --regex, --grammar), registered through decoders' hooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, field_validator

import decoders
from decoders_structured.grammars import json_schema_grammar, lark_grammar, regex_grammar
from decoders_structured.processor import GrammarConstraint


class _ConstraintConfig(decoders.ProcessorConfig):
    """What the three kinds share: the llguidance grammar, made and checked when the strategy is validated."""

    _grammar: str = PrivateAttr(default="")

    def build(self) -> GrammarConstraint:
        return GrammarConstraint(self._grammar)


class JsonSchemaConfig(_ConstraintConfig):
    """Constrain the output to JSON that validates against a JSON Schema (llguidance)."""

    kind: Literal["json_schema"] = "json_schema"
    json_schema: dict[str, Any] = Field(description="a JSON Schema object (draft 2020-12 keywords; llguidance's subset)")
    whitespace_flexible: bool = Field(
        default=False, description="allow whitespace between JSON tokens (default: compact JSON, no whitespace)"
    )

    @field_validator("json_schema")
    @classmethod
    def _check(cls, schema: dict[str, Any]) -> dict[str, Any]:
        json_schema_grammar(schema)  # raises GrammarError (a ValueError) naming the schema location
        return schema

    def model_post_init(self, context: Any) -> None:
        self._grammar = json_schema_grammar(self.json_schema, self.whitespace_flexible)


class RegexConfig(_ConstraintConfig):
    """Constrain the whole output to match a regular expression (Rust regex syntax, anchored at both ends)."""

    kind: Literal["regex"] = "regex"
    regex: str = Field(min_length=1, description="the regex the output must fullmatch")

    @field_validator("regex")
    @classmethod
    def _check(cls, regex: str) -> str:
        regex_grammar(regex)
        return regex

    def model_post_init(self, context: Any) -> None:
        self._grammar = regex_grammar(self.regex)


class GrammarConfig(_ConstraintConfig):
    """Constrain the output to a context-free grammar in llguidance's Lark syntax (the rule ``start`` is the top)."""

    kind: Literal["grammar"] = "grammar"
    grammar: str = Field(min_length=1, description="a Lark grammar; lowercase rules, UPPERCASE or /regex/ tokens")

    @field_validator("grammar")
    @classmethod
    def _check(cls, grammar: str) -> str:
        lark_grammar(grammar)
        return grammar

    def model_post_init(self, context: Any) -> None:
        self._grammar = lark_grammar(self.grammar)


CONFIGS = (JsonSchemaConfig, RegexConfig, GrammarConfig)


@decoders.hookimpl
def decoders_register_processors(register):
    for config in CONFIGS:
        register(config)


def read_text(value: str, what: str) -> str:
    """The text of file ``value`` (UTF-8), with a clear error when it cannot be read."""
    path = Path(value)
    if not path.is_file():
        raise ValueError(f"{what} file '{value}' does not exist (give the path of a file)")
    try:
        return path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read {what} file '{value}': {exc}") from None


def schema_option(value: str) -> list[dict[str, Any]]:
    """``--json-schema``: a schema file, or the schema itself as JSON text (starting with ``{``)."""
    inline = value.lstrip().startswith("{")
    text = value if inline else read_text(value, "JSON Schema")
    try:
        schema = json.loads(text)
    except json.JSONDecodeError as exc:
        source = "the JSON Schema" if inline else f"JSON Schema file '{value}'"
        raise ValueError(f"{source} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}") from None
    if not isinstance(schema, dict):
        raise ValueError(f"a JSON Schema is a JSON object, got {type(schema).__name__}")
    return [{"kind": "json_schema", "json_schema": schema}]


@decoders.hookimpl
def decoders_register_generate_options(register):
    register("--json-schema", schema_option, help="Only output JSON valid for this JSON Schema (a file, or inline JSON).",
             metavar="FILE|JSON")  # fmt: skip
    register("--regex", lambda value: [{"kind": "regex", "regex": value}], help="Only output text that fully matches this regex.", metavar="REGEX")
    register(
        "--grammar", lambda value: [{"kind": "grammar", "grammar": read_text(value, "grammar")}],
        help="Only output text of this Lark grammar file (top rule: start).", metavar="FILE",
    )  # fmt: skip
