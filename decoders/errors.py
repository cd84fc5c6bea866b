"""Exceptions raised by decoders. Every message names what is wrong and what to do about it."""


class DecodersError(Exception):
    """Base class of every error decoders raises on purpose."""


class NonFiniteLogitsError(DecodersError, ValueError):
    """Logits contain NaN (or a row has no finite value), so no distribution can be formed."""


class PluginError(DecodersError):
    """A plugin failed to load, failed to register, or clashed with another plugin."""


class ModelLoadError(DecodersError):
    """A model could not be loaded; the message lists what was tried."""


class GenerationError(DecodersError, ValueError):
    """Bad input to generation: an empty prompt, a prompt too long for the model, a bad length."""


class StrategyError(DecodersError, ValueError):
    """A strategy could not be found, read, converted, or built (e.g. a processor that a search cannot follow)."""


def validation_message(error: Exception) -> str:
    """A pydantic ``ValidationError`` as one ``field.path: message`` line per problem (no documentation links)."""
    lines = []
    for problem in getattr(error, "errors", lambda: [])():
        path = ".".join(str(part) for part in problem.get("loc", ()))
        message = problem.get("msg", "").removeprefix("Value error, ")
        lines.append(f"{path}: {message}" if path else message)
    return "\n".join(lines) or str(error)


class EngineStopped(DecodersError):
    """An engine's stepping thread has stopped (a bug or an exhausted machine): it cannot generate any more."""
