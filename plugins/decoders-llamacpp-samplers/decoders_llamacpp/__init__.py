"""llama.cpp's XTC, DRY, dynamic temperature and mirostat v2 samplers for ``decoders``.

Installed, the plugin ``llamacpp`` (entry point group ``decoders``) adds the processor kinds ``xtc``, ``dry``,
``dynatemp`` and ``mirostat`` to every strategy.
"""

from decoders_llamacpp.plugin import DRYConfig, DynaTempConfig, MirostatConfig, XTCConfig
from decoders_llamacpp.processors import DRY, XTC, DynamicTemperature, MirostatV2, SequenceBreakerError

__all__ = [
    "DRY",
    "XTC",
    "DRYConfig",
    "DynaTempConfig",
    "DynamicTemperature",
    "MirostatConfig",
    "MirostatV2",
    "SequenceBreakerError",
    "XTCConfig",
]
