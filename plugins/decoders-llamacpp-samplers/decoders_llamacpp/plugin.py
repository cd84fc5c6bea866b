"""The ``llamacpp`` plugin: configs of xtc, dry, dynatemp and mirostat, a preset, and the GenerationConfig fields
of xtc and dry, registered through decoders' hooks."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import Field

import decoders
from decoders_llamacpp.processors import DRY, XTC, DynamicTemperature, MirostatV2

#: llama.cpp's default DRY sequence breakers
DEFAULT_BREAKERS = ["\n", ":", '"', "*"]


class XTCConfig(decoders.ProcessorConfig):
    """XTC: with chance xtc_probability, remove all tokens with p ≥ xtc_threshold but the least likely."""

    kind: Literal["xtc"] = "xtc"
    xtc_threshold: float = Field(gt=0, le=0.5, description="in (0, 0.5]; above 0.5 no two tokens can reach it")
    xtc_probability: float = Field(gt=0, le=1, description="chance per row and step, in (0, 1]")
    min_tokens_to_keep: int = Field(default=1, ge=1, description="never leave fewer tokens than this")

    def build(self):
        return XTC(self.xtc_threshold, self.xtc_probability, self.min_tokens_to_keep)


class DRYConfig(decoders.ProcessorConfig):
    """DRY: penalise tokens that would extend a verbatim repeat of earlier text."""

    kind: Literal["dry"] = "dry"
    dry_multiplier: float = Field(gt=0, description="> 0 (llama.cpp suggests 0.8)")
    dry_base: float = Field(default=1.75, ge=1, description="growth of the penalty per extra repeated token, ≥ 1")
    dry_allowed_length: int = Field(default=2, ge=1, description="repeats shorter than this are not penalised")
    dry_penalty_last_n: int | None = Field(default=None, ge=1, description="look at the last n tokens (None: all)")
    dry_sequence_breakers: list[Annotated[str, Field(min_length=1)]] = Field(
        default_factory=lambda: list(DEFAULT_BREAKERS), description="strings that stop a repeat"
    )

    def build(self):
        return DRY(
            self.dry_multiplier, self.dry_base, self.dry_allowed_length, self.dry_penalty_last_n,
            self.dry_sequence_breakers,
        )  # fmt: skip


class DynaTempConfig(decoders.ProcessorConfig):
    """Dynamic temperature: T from temperature ∓ dynatemp_range, scaled by normalised entropy."""

    kind: Literal["dynatemp"] = "dynatemp"
    temperature: float = Field(gt=0, description="> 0; the centre of the range")
    dynatemp_range: float = Field(default=0.0, ge=0, description="≥ 0; 0 is plain temperature")
    dynatemp_exponent: float = Field(default=1.0, gt=0, description="> 0")

    def build(self):
        return DynamicTemperature(self.temperature, self.dynatemp_range, self.dynatemp_exponent)


class MirostatConfig(decoders.ProcessorConfig):
    """Mirostat v2: keep tokens with surprise ≤ μ; μ tracks the target surprise mirostat_tau."""

    kind: Literal["mirostat"] = "mirostat"
    mirostat_tau: float = Field(default=5.0, gt=0, description="target surprise in bits")
    mirostat_eta: float = Field(default=0.1, gt=0, description="learning rate of μ")

    def build(self):
        return MirostatV2(self.mirostat_tau, self.mirostat_eta)


CONFIGS = (XTCConfig, DRYConfig, DynaTempConfig, MirostatConfig)


@decoders.hookimpl
def decoders_register_processors(register):
    for config in CONFIGS:
        register(config)


#: a creative-writing chain in the spirit of llama.cpp front ends: DRY against loops, XTC against clichés
PRESETS = {
    "llama_cpp_creative": {
        "description": "llama.cpp creative writing: DRY 0.8, min-p 0.05, XTC 0.1 / 0.5, temperature 1.0",
        "processors": [
            {"kind": "dry", "dry_multiplier": 0.8},
            {"kind": "min_p", "min_p": 0.05},
            {"kind": "xtc", "xtc_threshold": 0.1, "xtc_probability": 0.5},
        ],
        "selector": {"kind": "sample"},
    }
}
#: GenerationConfig fields (llama.cpp's names, set as custom attributes) → the kind they configure
FIELDS = {
    "xtc": ("xtc_threshold", "xtc_probability"),
    "dry": ("dry_multiplier", "dry_base", "dry_allowed_length", "dry_penalty_last_n", "dry_sequence_breakers"),
}


@decoders.hookimpl
def decoders_register_presets(register):
    for name, strategy in PRESETS.items():
        register(name, strategy)


@decoders.hookimpl
def decoders_generation_config(fields):
    """XTC and DRY from a GenerationConfig that carries llama.cpp's field names (DRY first, as llama.cpp orders them)."""
    used, processors = [], []
    for kind in ("dry", "xtc"):
        present = {name: fields[name] for name in FIELDS[kind] if name in fields}
        if present:
            used += list(present)
            processors.append({"kind": kind, **present})
    return (used, processors) if processors else None
