"""OpenAI requests → a decoders strategy and engine requests; results → OpenAI choices, logprobs and usage.

How the fields become a strategy (the CLI's rules for ``--strategy`` and its parameter flags):

* ``strategy`` (a preset name, a strategy object or JSON text) *or* the processor fields, not both: the fields
  ``temperature``, ``top_p``, ``top_k``, ``min_p``, ``typical_p``, ``repetition_penalty``, ``presence_penalty``,
  ``frequency_penalty``, ``logit_bias`` and ``min_tokens`` each add one processor, as ``decoders generate``'s
  ``--temperature``… do, and are refused beside ``strategy`` (a 400 naming both). A field at its neutral value
  (OpenAI's and vLLM's defaults: temperature 1, top_p 1, top_k 0 or -1, min_p 0, typical_p 1, repetition_penalty 1,
  penalties 0, min_tokens 0, best_of 1) adds nothing and conflicts with nothing, so clients that always send the
  defaults work with a strategy.
* Without ``strategy`` the request samples (OpenAI's default temperature is 1); ``temperature: 0`` is greedy
  decoding. The processors run in vLLM's order: min_tokens, logit_bias, presence/frequency penalties, repetition
  penalty, temperature, top_k, top_p, min_p, typical_p.
* ``best_of`` asks for the best_of search (its ``n``), combined with the strategy as ``--n`` is in the CLI.
* ``response_format`` adds the structured-output plugin's ``json_schema`` constraint to any strategy, as the
  CLI's ``--json-schema`` does.
* ``n``: with a search that returns ranked hypotheses (beam, stochastic_beam, best_of) the ``n`` best of one
  request (beam's ``num_return_sequences`` raised to ``n``); with any other search, ``n`` independent requests
  with seeds ``seed, seed + 1, …`` (each one what ``decoders.generate`` gives with that seed).

A request never reads the server's files or loads a model: a strategy string is a preset name or JSON text, never
a path, and speculative decoding with a draft model (``assistant_model``) is refused (prompt lookup works).
"""

from __future__ import annotations

import difflib
import json
import math
from dataclasses import dataclass
from typing import Any

from pydantic import ValidationError

from decoders.cli import PROCESSOR_FLAGS, with_search
from decoders.errors import StrategyError, validation_message
from decoders.plugins import get_registry
from decoders.results import GenerationResult, Hypothesis, StepLogprobs
from decoders.serve.schemas import ApiError, ChatCompletionRequest, CompletionRequest
from decoders.strategy import Strategy, is_json_text

#: OpenAI's default ``max_tokens`` of ``/v1/completions`` (chat's default is the room left in the context)
COMPLETION_MAX_TOKENS = 16
#: the log-probability reported for a token the model gives no finite one (OpenAI's convention)
FLOOR_LOGPROB = -9999.0

#: the fields that are ``decoders generate``'s processor flags too (same names), in vLLM's order
_CLI_FIELDS = ("repetition_penalty", "temperature", "top_k", "top_p", "min_p", "typical_p")
#: each processor field: (processor kind, config field), in vLLM's order; the CLI's flags from the CLI's table
_FIELD_PROCESSORS = {
    "min_tokens": ("min_new_tokens", "min_new_tokens"),
    "logit_bias": ("logit_bias", "logit_bias"),
    "penalties": ("presence_frequency", None),  # presence_penalty and frequency_penalty: one processor
    **{name: PROCESSOR_FLAGS[name] for name in _CLI_FIELDS},
}
#: values that mean "off" (OpenAI's and vLLM's defaults): such a field adds no processor
_NEUTRAL = {
    "temperature": (1,), "top_p": (1,), "top_k": (0, -1), "min_p": (0,), "typical_p": (1,),
    "repetition_penalty": (1,), "presence_penalty": (0,), "frequency_penalty": (0,), "min_tokens": (0,),
    "best_of": (1,),
}  # fmt: skip
#: the fields that choose how tokens are picked, in the order a conflict names them
STRATEGY_FIELDS = (
    "temperature", "top_p", "top_k", "min_p", "typical_p", "repetition_penalty", "presence_penalty",
    "frequency_penalty", "logit_bias", "min_tokens",
)  # fmt: skip


def _given(body: Any, name: str) -> bool:
    value = getattr(body, name, None)
    return value is not None and not (name in _NEUTRAL and value in _NEUTRAL[name])


@dataclass(frozen=True)
class Plan:
    """What one request asks the engine for.

    Args:
        strategy: the strategy every engine request of it runs.
        copies: engine requests per prompt (``n`` for a search of one hypothesis, else 1).
        choices: choices per prompt (``n``).
        rows: batch rows each engine request takes (a beam search's ``num_beams``, best_of's ``n``).
        max_tokens: ``max_new_tokens`` (None: chat's default, the room left in the context).
        stop: stop strings.
        logprobs: top alternatives per token to report (None: no logprobs).
        ignore_eos: go on after an end-of-sequence token.
        seed: the first engine request's seed (request i of a prompt uses ``seed + i``).
    """

    strategy: Strategy
    copies: int
    choices: int
    rows: int
    max_tokens: int | None
    stop: list[str]
    logprobs: int | None
    ignore_eos: bool
    seed: int


def resolve_strategy(spec: str | dict[str, Any]) -> Strategy:
    """The request's ``strategy``: a preset name, a strategy object, or one as JSON text (never a file)."""
    registry = get_registry()
    if isinstance(spec, str) and not is_json_text(spec):
        if spec in registry.presets:
            return Strategy.from_preset(spec)
        close = difflib.get_close_matches(spec, list(registry.presets), n=1)
        raise ApiError(
            400,
            f"strategy: '{spec}' is not a preset ({', '.join(registry.presets)}); give a preset name, a strategy "
            'object such as {"processors": [{"kind": "top_k", "top_k": 40}], "selector": {"kind": "sample"}}, or '
            "one as JSON text (a server reads no strategy files)" + (f"; did you mean '{close[0]}'?" if close else ""),
            param="strategy", code="invalid_value",
        )  # fmt: skip
    if isinstance(spec, str):
        try:
            spec = json.loads(spec)
        except json.JSONDecodeError as exc:
            raise ApiError(
                400, f"strategy: the JSON text is not valid JSON: {exc}", param="strategy", code="invalid_value"
            ) from None
        if not isinstance(spec, dict):
            raise ApiError(400, "strategy: the JSON text must be an object", param="strategy", code="invalid_value")
    try:
        strategy = Strategy.model_validate(spec)
    except ValidationError as exc:
        raise ApiError(400, f"strategy: {validation_message(exc)}", param="strategy", code="invalid_value") from None
    if getattr(strategy.search, "assistant_model", None) is not None:
        raise ApiError(
            400,
            "strategy: speculative decoding with a draft model (assistant_model) is not served: a request cannot load a "
            "model on the server; use prompt lookup (prompt_lookup_num_tokens) instead",
            param="strategy", code="unsupported_value",
        )  # fmt: skip
    return strategy


def _field_processors(body: Any) -> list[Any]:
    """One processor config per given field, each checked on its own (a bad value names its field)."""
    registry = get_registry()
    values: dict[str, Any] = {}
    if _given(body, "min_tokens"):
        values["min_tokens"] = body.min_tokens
    if body.logit_bias:
        bias = {}
        for token, value in body.logit_bias.items():
            if not token.strip().isdigit():
                raise ApiError(400, f"logit_bias: key {token!r} is not a token id (a whole number ≥ 0 as a string)",
                               param="logit_bias", code="invalid_value")  # fmt: skip
            if not -100 <= value <= 100:
                raise ApiError(400, f"logit_bias: the bias of token {token} is {value}; biases go from -100 to 100",
                               param="logit_bias", code="invalid_value")  # fmt: skip
            bias[int(token)] = value
        values["logit_bias"] = bias
    if _given(body, "presence_penalty") or _given(body, "frequency_penalty"):
        values["penalties"] = {
            "presence_penalty": body.presence_penalty or 0.0,
            "frequency_penalty": body.frequency_penalty or 0.0,
        }
    for name in _CLI_FIELDS:
        if _given(body, name) and not (name == "temperature" and body.temperature == 0):
            values[name] = getattr(body, name)
    configs = []
    for name, value in values.items():
        kind, config_field = _FIELD_PROCESSORS[name]
        fields = {config_field: value} if config_field else value
        try:
            configs.append(registry.processors[kind].config.model_validate({"kind": kind, **fields}))
        except ValidationError as exc:
            field = "presence_penalty" if name == "penalties" else name
            message = (
                exc.errors()[0]["msg"]
                .removeprefix("Value error, ")
                .replace("leave the processor out", f"leave {field} out")
            )
            raise ApiError(400, f"{field} {value!r}: {message}", param=field, code="invalid_value") from None
    return configs


def request_strategy(body: CompletionRequest | ChatCompletionRequest) -> Strategy:
    """The strategy a request asks for: ``strategy`` or the processor fields, then ``best_of`` and
    ``response_format`` (see the module's docstring)."""
    greedy = body.temperature == 0
    if body.strategy is not None:
        clashing = [name for name in STRATEGY_FIELDS if (_given(body, name) or name == "temperature" and greedy)]
        if clashing:
            raise ApiError(
                400,
                f"strategy and {clashing[0]} both say how tokens are chosen: give {clashing[0]} inside the strategy, or "
                f"drop strategy and use the fields (as `decoders generate` refuses --strategy with --{clashing[0].replace('_', '-')})",
                param=clashing[0], code="conflicting_parameters",
            )  # fmt: skip
        chosen = resolve_strategy(body.strategy)
    else:
        chosen = Strategy(processors=_field_processors(body), selector={"kind": "greedy" if greedy else "sample"})
    if _given(body, "best_of"):
        if greedy:
            raise ApiError(400, f"best_of {body.best_of} draws samples, and temperature 0 is greedy decoding (every sample "
                           "the same): give a temperature > 0, or drop best_of", param="best_of", code="conflicting_parameters")  # fmt: skip
        if chosen.search.kind not in ("single", "best_of"):
            raise ApiError(400, f"best_of asks for the best_of search, and the strategy's search is '{chosen.search.kind}': "
                           "drop best_of, or the strategy's search", param="best_of", code="conflicting_parameters")  # fmt: skip
        try:
            chosen = with_search(chosen, None, user_strategy=True, n=body.best_of)
        except (StrategyError, ValidationError) as exc:
            message = validation_message(exc) if isinstance(exc, ValidationError) else str(exc)
            raise ApiError(400, f"best_of: {message}", param="best_of", code="invalid_value") from None
    if body.response_format is not None and body.response_format.type != "text":
        chosen = chosen.model_copy(
            update={"processors": [*chosen.processors, _format_constraint(body.response_format)]}
        )
    return chosen


def _format_constraint(response_format: Any) -> Any:
    """The structured-output plugin's json_schema constraint for ``response_format``."""
    registry = get_registry()
    if "json_schema" not in registry.processors:
        raise ApiError(
            400,
            f"response_format {response_format.type} needs structured output, which this server does not have: install "
            "the decoders-structured plugin next to decoders (pip install decoders-structured) and restart it",
            param="response_format", code="unsupported_value",
        )  # fmt: skip
    if response_format.type == "json_object":
        schema: dict[str, Any] = {"type": "object"}
    else:
        schema = response_format.json_schema.json_schema if response_format.json_schema else None
        if not schema:
            raise ApiError(400, "response_format: type json_schema needs json_schema.schema, a JSON Schema object",
                           param="response_format", code="invalid_value")  # fmt: skip
    try:
        return registry.processors["json_schema"].config.model_validate({"kind": "json_schema", "json_schema": schema})
    except ValidationError as exc:
        raise ApiError(
            400, f"response_format: {validation_message(exc)}", param="response_format", code="invalid_value"
        ) from None


def plan_request(body: CompletionRequest | ChatCompletionRequest, *, chat: bool, seed: int) -> Plan:
    """The strategy and engine requests of one request (``seed``: the request's, or a random one drawn for it)."""
    strategy = request_strategy(body)
    n = body.n
    copies = n
    search = strategy.search
    if search.kind == "best_of":
        if n > search.n:
            raise ApiError(400, f"n ({n}) must be ≤ best_of ({search.n}): best_of draws that many samples and returns the "
                           "n most likely", param="n", code="invalid_value")  # fmt: skip
        copies = 1
    elif "num_return_sequences" in type(search).model_fields:  # beam, stochastic_beam: the n best hypotheses
        if n > search.num_beams:
            raise ApiError(400, f"n ({n}) must be ≤ the strategy's num_beams ({search.num_beams}): the '{search.kind}' "
                           "search keeps num_beams hypotheses", param="n", code="invalid_value")  # fmt: skip
        if search.num_return_sequences is not None and search.num_return_sequences < n:
            strategy = strategy.model_copy(update={"search": search.model_copy(update={"num_return_sequences": n})})
        copies = 1
    rows, _ = strategy.build_search().rows_per_prompt()
    if chat:
        if (
            body.max_tokens is not None
            and body.max_completion_tokens is not None
            and body.max_tokens != body.max_completion_tokens
        ):
            raise ApiError(400, f"max_tokens ({body.max_tokens}) and max_completion_tokens ({body.max_completion_tokens}) "
                           "differ: give one of them", param="max_completion_tokens", code="conflicting_parameters")  # fmt: skip
        max_tokens = body.max_completion_tokens or body.max_tokens
        if body.top_logprobs is not None and not body.logprobs:
            raise ApiError(400, "top_logprobs needs logprobs: true", param="top_logprobs", code="invalid_value")
        logprobs = (body.top_logprobs or 0) if body.logprobs else None
    else:
        max_tokens = body.max_tokens or COMPLETION_MAX_TOKENS
        logprobs = body.logprobs
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not text for text in stop):
        raise ApiError(400, "stop: stop strings must not be empty", param="stop", code="invalid_value")
    if body.stream_options is not None and not body.stream:
        raise ApiError(
            400, "stream_options is only allowed with stream: true", param="stream_options", code="invalid_value"
        )
    return Plan(strategy, copies, n, rows, max_tokens, stop, logprobs, body.ignore_eos, seed)


# ---- results → OpenAI --------------------------------------------------------------------------------------------


def finish_reason(reason: str) -> str:
    """decoders' ``eos``/``stop``/``length`` as OpenAI's ``stop``/``length``."""
    return "length" if reason == "length" else "stop"


def choice_hypotheses(result: GenerationResult, plan: Plan) -> list[Hypothesis]:
    """The hypotheses one engine request contributes as choices: its best one, or its ``n`` best."""
    return result.alternatives[: plan.choices] if plan.copies == 1 else result.alternatives[:1]


def _finite(value: float | None) -> float:
    return value if value is not None and math.isfinite(value) else FLOOR_LOGPROB


def visible_logprobs(hypothesis: Hypothesis, eos_token_ids: tuple[int, ...]) -> list[StepLogprobs]:
    """The per-token log-probabilities of the tokens the text shows (a closing end-of-sequence token left out)."""
    steps = list(hypothesis.logprobs or [])
    ids = hypothesis.generated_ids
    if steps and hypothesis.finish_reason == "eos" and ids and ids[-1] in eos_token_ids:
        steps = steps[:-1]
    return steps


def completion_logprobs(steps: list[StepLogprobs], top: int, offset: int) -> dict[str, Any]:
    """The legacy completions ``logprobs`` object (the model's own log-probabilities, as vLLM reports them)."""
    offsets, position = [], offset
    for step in steps:
        offsets.append(position)
        position += len(step.chosen.token)
    return {
        "tokens": [step.chosen.token for step in steps],
        "token_logprobs": [_finite(step.chosen.raw) for step in steps],
        "top_logprobs": [{t.token: _finite(t.raw) for t in step.top[:top]} for step in steps] if top else None,
        "text_offset": offsets,
    }


def _token_entry(token: str, logprob: float) -> dict[str, Any]:
    return {"token": token, "logprob": _finite(logprob), "bytes": list(token.encode("utf-8"))}


def chat_logprobs(steps: list[StepLogprobs], top: int) -> dict[str, Any]:
    """The chat ``logprobs`` object: ``content``, one entry per token with its ``top_logprobs``."""
    return {
        "content": [
            {**_token_entry(step.chosen.token, step.chosen.raw),
             "top_logprobs": [_token_entry(t.token, t.raw) for t in step.top[:top]]}
            for step in steps
        ],
        "refusal": None,
    }  # fmt: skip


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def chat_messages(messages: list[Any]) -> list[dict[str, Any]]:
    """The request's messages as the chat template takes them: text parts joined, ``developer`` as ``system``."""
    rendered = []
    for index, message in enumerate(messages):
        content = message.content
        if isinstance(content, list):
            texts = []
            for part in content:
                if part.get("type") != "text" or not isinstance(part.get("text"), str):
                    raise ApiError(400, f"messages.{index}.content: only text parts ({{\"type\": \"text\", \"text\": …}}) are "
                                   f"supported, got type {part.get('type')!r}", param=f"messages.{index}.content",
                                   code="unsupported_value")  # fmt: skip
                texts.append(part["text"])
            content = "\n".join(texts)
        entry = {**(message.model_extra or {}), "role": "system" if message.role == "developer" else message.role,
                 "content": content or ""}  # fmt: skip
        if message.name is not None:
            entry["name"] = message.name
        rendered.append(entry)
    return rendered
