"""The request bodies of the OpenAI-compatible endpoints (pydantic, strict types), and the error the API answers.

Fields are OpenAI's (``max_tokens``, ``temperature``, ``n``, ``logprobs``…), with vLLM's extras (``top_k``,
``min_p``, ``repetition_penalty``, ``typical_p``, ``ignore_eos``, ``min_tokens``) and decoders' own ``strategy``.
Types are checked strictly (``"5"`` is not a number); ranges that decoders itself checks (``top_p``, ``top_k``…)
are left to it, so their messages are decoders' own. An unknown field is refused (a typo is not ignored); fields
that do not change what is generated (``user``, ``metadata``, ``store``…) are accepted and ignored.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

#: OpenAI's bounds: ``n`` choices per prompt, ``top_logprobs`` per token (vLLM's default ``max_logprobs``)
MAX_N = 128
MAX_LOGPROBS = 20


class ApiError(Exception):
    """An error answered as OpenAI answers one: ``{"error": {"message", "type", "param", "code"}}``.

    Args:
        status: the HTTP status (400 bad value, 401 bad key, 404 unknown model, 429 queue full, …).
        message: what is wrong and what to do, naming the request field.
        param: the request field at fault, if one is.
        code: a short machine-readable code (``invalid_value``, ``model_not_found``, …).
        type: OpenAI's error type (default: ``invalid_request_error`` below 500, ``server_error`` from 500).

    Example:
        >>> ApiError(400, "n must be ≤ 128", param="n").body()["error"]["param"]
        'n'
    """

    def __init__(
        self, status: int, message: str, *, param: str | None = None, code: str | None = None, type: str | None = None
    ):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")

    def body(self) -> dict[str, Any]:
        return {"error": {"message": self.message, "type": self.type, "param": self.param, "code": self.code}}


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)


class StreamOptions(_Body):
    """``stream_options``: ``include_usage`` adds a last chunk with the usage (and ``"usage": null`` to the others)."""

    include_usage: bool = False
    continuous_usage_stats: bool = False  # vLLM's; accepted, not used


class JsonSchemaFormat(BaseModel):
    """``response_format.json_schema``: the schema and its name (``strict`` is accepted: the output always follows
    the schema)."""

    model_config = ConfigDict(extra="allow", strict=True, populate_by_name=True)

    name: str | None = None
    description: str | None = None
    json_schema: dict[str, Any] | None = Field(default=None, alias="schema")
    strict: bool | None = None


class ResponseFormat(_Body):
    """``response_format``: ``text`` (free text), ``json_object`` (any JSON object) or ``json_schema``."""

    type: Literal["text", "json_object", "json_schema"]
    json_schema: JsonSchemaFormat | None = None


class _Generation(_Body):
    """The fields both endpoints share."""

    model: str | None = None
    max_tokens: int | None = Field(default=None, ge=1)
    temperature: float | None = Field(default=None, ge=0)
    top_p: float | None = None
    n: int = Field(default=1, ge=1, le=MAX_N)
    seed: int | None = Field(default=None, ge=0, lt=2**63)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    presence_penalty: float | None = Field(default=None, ge=-2, le=2)
    frequency_penalty: float | None = Field(default=None, ge=-2, le=2)
    logit_bias: dict[str, float] | None = None
    best_of: int | None = Field(default=None, ge=1, le=MAX_N)
    response_format: ResponseFormat | None = None
    # vLLM's extras
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    typical_p: float | None = None
    ignore_eos: bool = False
    min_tokens: int | None = Field(default=None, ge=0)
    # decoders' own: a preset name, a strategy object or a strategy as JSON text
    strategy: str | dict[str, Any] | None = None
    # accepted and ignored: they do not change what is generated
    user: str | None = None
    metadata: dict[str, Any] | None = None
    store: bool | None = None
    service_tier: str | None = None
    safety_identifier: str | None = None
    prompt_cache_key: str | None = None


class CompletionRequest(_Generation):
    """``POST /v1/completions``: a prompt (or a list of prompts) to continue."""

    prompt: str | list[str]
    logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    echo: bool = False
    suffix: str | None = None


class ChatMessage(BaseModel):
    """One message: a role and its content (a string, or a list of ``{"type": "text", "text": …}`` parts)."""

    model_config = ConfigDict(extra="allow", strict=True)

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[dict[str, Any]] | None = None
    name: str | None = None


class ChatCompletionRequest(_Generation):
    """``POST /v1/chat/completions``: messages, rendered with the model's chat template."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(default=None, ge=1)
    logprobs: bool = False
    top_logprobs: int | None = Field(default=None, ge=0, le=MAX_LOGPROBS)
    tools: list[Any] | None = None
    tool_choice: Any = None
    parallel_tool_calls: bool | None = None
    functions: list[Any] | None = None
    function_call: Any = None
    modalities: list[str] | None = None
    reasoning_effort: str | None = None
    verbosity: str | None = None


#: union branches pydantic names in an error's location (``stop.str``, ``strategy.dict[str,any]``): not fields
def _is_branch(part: object) -> bool:
    return isinstance(part, str) and ("[" in part or part in {"str", "int", "float", "bool", "list", "dict", "none"})


def request_error(error: ValidationError) -> ApiError:
    """A request body's validation error as a 400 naming the field (the first field at fault; every message)."""
    problems: dict[str, list[str]] = {}
    for problem in error.errors():
        path = ".".join(str(part) for part in problem.get("loc", ()) if not _is_branch(part))
        message = problem.get("msg", "").removeprefix("Value error, ")
        if problem.get("type") == "extra_forbidden":
            message = "unrecognized request argument: this server does not know it (check its spelling)"
        elif problem.get("type") == "missing":
            message = "this field is required"
        problems.setdefault(path, [])
        if message not in problems[path]:
            problems[path].append(message)
    param = next(iter(problems), None) or None
    text = "; ".join(
        f"{path}: {' or '.join(messages)}" if path else " or ".join(messages) for path, messages in problems.items()
    )
    return ApiError(400, text or str(error), param=param, code="invalid_value")
