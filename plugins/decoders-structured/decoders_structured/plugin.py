"""The ``structured`` plugin: the json_schema, regex and grammar constraint kinds, and their ``decoders generate``
options (--json-schema, --regex, --grammar), registered through decoders' hooks."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, PrivateAttr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

import decoders
from decoders_structured.grammars import GrammarError, check_json_option, json_schema_grammar, lark_grammar, regex_grammar
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
        default=False, description="allow any JSON whitespace between JSON tokens (default: compact JSON, no whitespace)"
    )
    whitespace_pattern: str | None = Field(
        default=None, min_length=1,
        description="a regex of the whitespace allowed, at most once, where JSON allows whitespace: '[ ]', '[ \\n]{0,2}'",
    )  # fmt: skip
    item_separator: str = Field(default=",", min_length=1, description="a regex of the separator between items: ', ?'")
    key_separator: str = Field(default=":", min_length=1, description="a regex of the separator after a key: ': ?'")
    coerce_one_of: bool = Field(
        default=False, description="treat a oneOf llguidance cannot prove exclusive as anyOf (accepts a value matching two)"
    )
    lenient: bool = Field(
        default=False, description="ignore the keywords and formats llguidance lacks instead of refusing them (implies coerce_one_of)"
    )  # fmt: skip

    @field_validator("whitespace_pattern", "item_separator", "key_separator")
    @classmethod
    def _check_regex(cls, pattern: str | None, info: ValidationInfo) -> str | None:
        return None if pattern is None else check_json_option(info.field_name, pattern)

    @model_validator(mode="after")
    def _check(self) -> JsonSchemaConfig:
        """Compile the schema with the options (errors name the field); lenient implies coerce_one_of."""
        config = self
        if self.lenient and not self.coerce_one_of:
            if "coerce_one_of" in self.model_fields_set:
                _refuse("coerce_one_of", False,
                        "lenient=true treats oneOf as anyOf (coerce_one_of=true): drop coerce_one_of=false or lenient")  # fmt: skip
            config = self.model_copy(update={"coerce_one_of": True})
        if self.whitespace_pattern is not None and self.whitespace_flexible:
            _refuse("whitespace_pattern", self.whitespace_pattern,
                    "whitespace_pattern replaces whitespace_flexible: give one of them, not both")  # fmt: skip
        try:
            config._grammar = json_schema_grammar(
                self.json_schema, self.whitespace_flexible, whitespace_pattern=self.whitespace_pattern,
                item_separator=self.item_separator, key_separator=self.key_separator, coerce_one_of=self.coerce_one_of,
                lenient=self.lenient,
            )  # fmt: skip
        except GrammarError as exc:
            _refuse("json_schema", self.json_schema, str(exc))
        return config


def _refuse(field: str, value: Any, message: str) -> None:
    """Raise a validation error of ``field`` (for a check that needs the other fields, in a model validator)."""
    error = PydanticCustomError("value_error", "Value error, {error}", {"error": message})
    details = [InitErrorDetails(type=error, loc=(field,), input=value)]
    raise ValidationError.from_exception_data(JsonSchemaConfig.__name__, details)


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
