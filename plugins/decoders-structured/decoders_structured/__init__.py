"""Structured output for ``decoders``: JSON Schema, regex and Lark grammar constraints, with llguidance.

Installed, the plugin ``structured`` (entry point group ``decoders``) adds the processor kinds ``json_schema``,
``regex`` and ``grammar`` to every strategy, and the options ``--json-schema``, ``--regex`` and ``--grammar`` to
``decoders generate``.
"""

from decoders_structured.grammars import GrammarError, SchemaWarning, json_schema_grammar, lark_grammar, regex_grammar
from decoders_structured.plugin import GrammarConfig, JsonSchemaConfig, RegexConfig
from decoders_structured.processor import GrammarConstraint

__all__ = [
    "GrammarConfig",
    "GrammarConstraint",
    "GrammarError",
    "JsonSchemaConfig",
    "RegexConfig",
    "SchemaWarning",
    "json_schema_grammar",
    "lark_grammar",
    "regex_grammar",
]
