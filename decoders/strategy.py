"""Strategies: an ordered list of processor configs, one selector config and one search config (pydantic).

A strategy is data (JSON/TOML, presets, transformers ``GenerationConfig``); :meth:`Strategy.build` turns
it into a :class:`decoders.chain.Chain`, :meth:`Strategy.build_search` into a search. The kinds accepted
are whatever the plugin registry holds at validation time, built-ins and plugins alike.
"""

from __future__ import annotations

import difflib
import json
import tomllib
import warnings
from pathlib import Path
from typing import Any

import tomli_w
from pydantic import BaseModel, ConfigDict, Field, SerializeAsAny, ValidationError, create_model, field_validator

from decoders import builtins as b
from decoders.chain import Chain
from decoders.config import ProcessorConfig, SearchConfig, SelectorConfig
from decoders.errors import StrategyError, validation_message
from decoders.plugins import discriminated_union, get_registry
from decoders.searches import Search, SingleConfig

#: the six presets the tutorial compares, in its order, then beam search
COMPARE_PRESETS = ("greedy", "low_temperature", "high_temperature", "top_k", "top_p", "balanced", "beam_search")

# GenerationConfig fields that say how long to generate or which tokens are special, not how to pick one
_NOT_STRATEGY_FIELDS = {
    "transformers_version", "max_length", "max_new_tokens", "bos_token_id", "eos_token_id", "pad_token_id",
    "use_cache", "return_dict_in_generate", "output_scores", "output_logits", "cache_implementation",
    "_from_model_config", "output_attentions", "output_hidden_states",
}  # fmt: skip
_WARPER_FIELDS = ("temperature", "top_k", "top_p", "min_p", "typical_p", "epsilon_cutoff", "eta_cutoff")
_SPECULATIVE_FIELDS = ("prompt_lookup_num_tokens", "max_matching_ngram_size", "num_assistant_tokens_schedule")
_BEAM_FIELDS = ("length_penalty", "early_stopping", "num_return_sequences", "num_beam_groups", "diversity_penalty")
_SUPPORTED_FIELDS = {
    "do_sample", "sequence_bias", "repetition_penalty", "no_repeat_ngram_size", "bad_words_ids",
    "min_new_tokens", "num_beams", "penalty_alpha", *_BEAM_FIELDS, *_WARPER_FIELDS, *_SPECULATIVE_FIELDS,
}  # fmt: skip


def _describe_config(config: Any) -> str:
    """``kind(values that differ from the defaults)``."""
    fields = type(config).model_fields
    values = [str(v) for k, v in config.model_dump().items() if k != "kind" and v != fields[k].default]
    return f"{config.kind}({', '.join(values)})" if values else config.kind


def is_json_text(spec: object) -> bool:
    """Whether a strategy spec is a JSON object written out as text (what :meth:`Strategy.resolve` parses as JSON)."""
    return isinstance(spec, str) and spec.lstrip().startswith("{")


class Strategy(BaseModel):
    """An ordered chain of processor configs, one selector config and one search config.

    Args:
        processors: processor configs (or dicts with a ``kind``), run in the order given.
        selector: the selector config (or dict); default greedy.
        search: the search config (or dict); default ``single`` (one hypothesis per prompt).
        name: an optional label, shown in reports.
        description: an optional sentence saying what the strategy is for (presets have one).

    Example:
        >>> s = Strategy.model_validate({
        ...     "processors": [{"kind": "temperature", "temperature": 0.7}, {"kind": "top_k", "top_k": 50}],
        ...     "selector": {"kind": "sample"}})
        >>> s.build()
        Chain(Temperature(temperature=0.7) → TopK(top_k=50) → Sample())
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: str | None = None
    description: str | None = None
    processors: list[SerializeAsAny[ProcessorConfig]] = Field(default_factory=list)
    selector: SerializeAsAny[SelectorConfig] = Field(default_factory=b.GreedyConfig)
    search: SerializeAsAny[SearchConfig] = Field(default_factory=SingleConfig)

    @field_validator("processors", mode="wrap")
    @classmethod
    def _validate_processors(cls, value: Any, handler: Any) -> list[ProcessorConfig]:
        return get_registry().processor_list_adapter.validate_python(value)

    @field_validator("selector", mode="wrap")
    @classmethod
    def _validate_selector(cls, value: Any, handler: Any) -> SelectorConfig:
        return get_registry().selector_adapter.validate_python(value)

    @field_validator("search", mode="wrap")
    @classmethod
    def _validate_search(cls, value: Any, handler: Any) -> SearchConfig:
        return get_registry().search_adapter.validate_python(value)

    def build(self, *, use_candidates: bool = True) -> Chain:
        """Build the chain: each config's ``build()``, in order, then the selector.

        Raises :class:`StrategyError` when the search cannot use this chain (e.g. a stateful processor
        without ``reorder`` under beam search), so a bad combination fails here and not mid-generation.
        """
        chain = Chain([config.create() for config in self.processors], self.selector.create(), use_candidates=use_candidates)
        self.build_search().check(chain)
        return chain

    def build_search(self) -> Search:
        """Build the search (see :mod:`decoders.searches`)."""
        return self.search.create()

    def describe(self) -> str:
        """A one-line human description, e.g. ``temperature(0.7) → top_k(50) → sample`` (``· beam(4)`` for a search)."""
        parts = [_describe_config(config) for config in self.processors]
        chain = " → ".join([*parts, self.selector.kind])
        return chain if self.search.kind == "single" else f"{chain} · {_describe_config(self.search)}"

    # ---- presets and files ------------------------------------------------------------------------------

    @classmethod
    def from_preset(cls, name: str) -> Strategy:
        """A named preset: the built-in ones (:data:`decoders.PRESETS`) and any a plugin registers."""
        presets = get_registry().presets
        if name not in presets:
            raise StrategyError(f"unknown preset '{name}'; presets: {', '.join(presets)}")
        preset = presets[name]
        try:
            return cls.model_validate({"name": name, **preset.strategy})
        except ValidationError as exc:
            raise StrategyError(
                f"preset '{name}' of plugin '{preset.plugin}' is not a valid strategy:\n{validation_message(exc)}"
            ) from None

    @classmethod
    def load(cls, path: str | Path) -> Strategy:
        """Read a strategy from a ``.json`` or ``.toml`` file (UTF-8, a byte-order mark is allowed)."""
        path = Path(path)
        if path.is_dir():
            raise StrategyError(f"strategy file '{path}' is a folder: give the path of a .json or .toml file")
        if not path.is_file():
            raise StrategyError(f"strategy file '{path}' does not exist")
        try:
            text = path.read_bytes().decode("utf-8-sig")
        except UnicodeDecodeError as exc:
            raise StrategyError(
                f"strategy file '{path}' is not UTF-8 text (byte {exc.start} is {exc.object[exc.start:exc.start + 1]!r}): "
                "save it as UTF-8"
            ) from None
        kind = "TOML" if path.suffix.lower() == ".toml" else "JSON"
        try:
            data = tomllib.loads(text) if kind == "TOML" else json.loads(text)
        except (tomllib.TOMLDecodeError, json.JSONDecodeError) as exc:
            raise StrategyError(f"strategy file '{path}' is not valid {kind}: {exc}") from exc
        if not isinstance(data, dict):
            raise StrategyError(f"strategy file '{path}' holds a {type(data).__name__}, not a {kind} object with processors")
        if not data:
            raise StrategyError(
                f"strategy file '{path}' is empty: give at least one of processors, selector or search "
                "(for plain greedy decoding use the preset 'greedy')"
            )
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise StrategyError(f"strategy file '{path}' is not a valid strategy:\n{validation_message(exc)}") from None

    def save(self, path: str | Path) -> Path:
        """Write this strategy as ``.json`` or ``.toml`` (by the file's suffix)."""
        path = Path(path)
        data = self.model_dump(mode="json", exclude_none=True)
        path.write_text(tomli_w.dumps(data) if path.suffix.lower() == ".toml" else json.dumps(data, indent=2) + "\n")
        return path

    @classmethod
    def resolve(cls, spec: Strategy | dict | str | Path | None) -> Strategy:
        """Accept a Strategy, a dict, a preset name, a path to a JSON/TOML file, or a JSON object as text (None:
        greedy)."""
        if spec is None:
            return cls.from_preset("greedy")
        if isinstance(spec, Strategy):
            return spec
        if is_json_text(spec):
            try:
                spec = json.loads(spec)
            except json.JSONDecodeError as exc:
                raise StrategyError(f"inline strategy {spec!r} is not valid JSON: {exc}") from None
        if isinstance(spec, dict):
            return cls.model_validate(spec)
        if not isinstance(spec, str | Path):
            raise StrategyError(
                "a strategy is a preset name, a .json/.toml file, JSON text, a dict or a Strategy; got "
                f"{type(spec).__name__}"
            )
        if isinstance(spec, Path) or str(spec).lower().endswith((".json", ".toml")) or Path(spec).exists():
            return cls.load(spec)
        presets = get_registry().presets
        if spec in presets:
            return cls.from_preset(spec)
        close = difflib.get_close_matches(str(spec), list(presets), n=1)
        raise StrategyError(
            f"'{spec}' is neither a preset ({', '.join(presets)}) nor a .json/.toml strategy file nor a JSON object "
            """such as '{"processors": [{"kind": "top_k", "top_k": 40}], "selector": {"kind": "sample"}}'"""
            + (f"; did you mean '{close[0]}'?" if close else "")
        )

    @classmethod
    def json_schema(cls) -> dict[str, Any]:
        """The JSON Schema of strategies, with every registered kind (plugins included)."""
        registry = get_registry()
        processor = discriminated_union([r.config for r in registry.processors.values()])
        selector = discriminated_union([r.config for r in registry.selectors.values()])
        search = discriminated_union([r.config for r in registry.searches.values()])
        model = create_model(
            "Strategy",
            __config__=ConfigDict(extra="forbid"),
            __doc__=cls.__doc__.split("\n\n")[0],
            name=(str | None, None),
            description=(str | None, None),
            processors=(list[processor], Field(default_factory=list)),
            selector=(selector, Field(default_factory=b.GreedyConfig)),
            search=(search, Field(default_factory=SingleConfig)),
        )
        return model.model_json_schema()

    # ---- transformers interop ---------------------------------------------------------------------------

    @classmethod
    def from_generation_config(cls, config: Any, *, strict: bool = False) -> Strategy:
        """The chain transformers' ``generate`` builds for ``config`` (same processors, same order).

        Fields that are not about choosing tokens (lengths, special ids) are left to the caller. Fields this
        library does not support are reported in a :class:`UserWarning` (or a :class:`StrategyError` when
        ``strict``) that names them.

        Args:
            config: a ``transformers.GenerationConfig`` or a dict of its fields.
            strict: raise instead of warning when a field is ignored.
        """
        fields = dict(config) if isinstance(config, dict) else config.to_diff_dict()
        fields = {k: v for k, v in fields.items() if v is not None}
        ignored = sorted(k for k in fields if k not in _SUPPORTED_FIELDS and k not in _NOT_STRATEGY_FIELDS)
        processors: list[dict[str, Any]] = []
        bias = fields.get("sequence_bias")
        if bias:
            items = bias.items() if isinstance(bias, dict) else [(tuple(k), v) for k, v in bias]
            single = {int(k[0]): float(v) for k, v in items if len(k) == 1}
            if len(single) < len(list(items)):
                ignored.append("sequence_bias (multi-token sequences)")
            if single:
                processors.append({"kind": "logit_bias", "logit_bias": single})
        if fields.get("repetition_penalty", 1.0) != 1.0:
            processors.append({"kind": "repetition_penalty", "repetition_penalty": fields["repetition_penalty"]})
        if fields.get("no_repeat_ngram_size", 0) > 0:
            processors.append({"kind": "no_repeat_ngram", "no_repeat_ngram_size": fields["no_repeat_ngram_size"]})
        if fields.get("bad_words_ids"):
            processors.append({"kind": "bad_words", "bad_words_ids": fields["bad_words_ids"]})
        if fields.get("min_new_tokens", 0) > 0:
            processors.append({"kind": "min_new_tokens", "min_new_tokens": fields["min_new_tokens"]})
        do_sample = bool(fields.get("do_sample", False))
        if do_sample:
            if fields.get("temperature", 1.0) != 1.0:
                processors.append({"kind": "temperature", "temperature": fields["temperature"]})
            if fields.get("top_k", 0) != 0:
                processors.append({"kind": "top_k", "top_k": fields["top_k"]})
            if fields.get("top_p", 1.0) < 1.0:
                processors.append({"kind": "top_p", "top_p": fields["top_p"]})
            if "min_p" in fields:
                processors.append({"kind": "min_p", "min_p": fields["min_p"]})
            if fields.get("typical_p", 1.0) < 1.0:
                processors.append({"kind": "typical_p", "typical_p": fields["typical_p"]})
            if 0.0 < fields.get("epsilon_cutoff", 0.0) < 1.0:
                processors.append({"kind": "epsilon_cutoff", "epsilon_cutoff": fields["epsilon_cutoff"]})
            if 0.0 < fields.get("eta_cutoff", 0.0) < 1.0:
                processors.append({"kind": "eta_cutoff", "eta_cutoff": fields["eta_cutoff"]})
        else:
            ignored += [f"{k} (do_sample is off)" for k in _WARPER_FIELDS if k in fields]
        for plugin, outcome in get_registry().each_plugin("decoders_generation_config", fields=dict(fields)):
            if isinstance(outcome, Exception):
                raise StrategyError(
                    f"plugin '{plugin}' failed to convert the GenerationConfig: {type(outcome).__name__}: {outcome}"
                )
            if outcome:
                used, extra = outcome
                processors.extend(extra)
                ignored = [name for name in ignored if name not in used]
        search: dict[str, Any] = {"kind": "single"}
        if fields.get("prompt_lookup_num_tokens") and fields.get("num_beams", 1) > 1:
            raise StrategyError(
                f"the GenerationConfig asks for speculative decoding (prompt_lookup_num_tokens) with beam search "
                f"(num_beams={fields['num_beams']}): speculative decoding verifies one sequence per prompt; set "
                "num_beams to 1 or drop prompt_lookup_num_tokens"
            )
        if fields.get("prompt_lookup_num_tokens"):
            search = {"kind": "speculative", **{k: fields[k] for k in _SPECULATIVE_FIELDS if fields.get(k) is not None}}
        elif fields.get("penalty_alpha", 0) > 0 and fields.get("top_k", 0) > 1 and not do_sample:
            search = {"kind": "contrastive", "penalty_alpha": fields["penalty_alpha"], "top_k": fields["top_k"]}
            ignored = [name for name in ignored if not name.startswith("top_k")]
        elif fields.get("num_beams", 1) > 1:
            search = {"kind": "beam", "num_beams": fields["num_beams"]}
            search.update({k: fields[k] for k in _BEAM_FIELDS if k in fields})
        else:
            ignored += [f"{k} (num_beams is 1)" for k in _BEAM_FIELDS if k in fields and k != "num_return_sequences"]
            if fields.get("num_return_sequences", 1) > 1:
                ignored.append("num_return_sequences (without beams; generate one call per sample instead)")
            if fields.get("dola_layers") is not None:  # transformers runs DoLa over greedy search or sampling only
                search = {"kind": "dola", "dola_layers": fields["dola_layers"]}
                ignored = [name for name in ignored if name != "dola_layers"]
        if ignored:
            message = f"GenerationConfig fields not supported by decoders, ignored: {', '.join(ignored)}"
            if strict:
                raise StrategyError(message)
            warnings.warn(message, UserWarning, stacklevel=2)
        return cls.model_validate(
            {"name": "generation_config", "processors": processors, "selector": {"kind": "sample" if do_sample else "greedy"},
             "search": search}
        )  # fmt: skip
