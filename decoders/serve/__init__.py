"""An OpenAI-compatible HTTP server over :class:`decoders.Engine` (``decoders serve``; the ``serve`` extra).

    client (curl, the openai package…) → /v1/completions, /v1/chat/completions (JSON, or server-sent events)
      → the request checked whole (OpenAI's fields, vLLM's extras, decoders' ``strategy``) → a Strategy + options
      → Admission (at most --max-rows rows run, at most --queue requests wait; 429 beyond)
      → ServingRunner (an AsyncEngine: every live request shares each forward pass) → events → choices, usage

Modules: :mod:`~decoders.serve.schemas` (request bodies, OpenAI errors), :mod:`~decoders.serve.mapping` (fields →
strategy, results → choices), :mod:`~decoders.serve.runner` (engine side, queue), :mod:`~decoders.serve.metrics`,
:mod:`~decoders.serve.app` (the Starlette app), :mod:`~decoders.serve.cli` (the command).
"""

__all__ = ["create_app", "running"]


def __getattr__(name: str):
    if name in __all__:  # the app imports starlette: only on use
        from decoders.serve import app

        return getattr(app, name)
    raise AttributeError(f"module 'decoders.serve' has no attribute {name!r}")
