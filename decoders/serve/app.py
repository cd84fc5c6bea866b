"""The OpenAI-compatible HTTP server: a Starlette app over one :class:`~decoders.serve.runner.ServingRunner`.

    GET  /v1/models            the served model
    POST /v1/completions       a prompt (or a list) → text; ``stream`` sends server-sent events
    POST /v1/chat/completions  messages → the chat template → text
    GET  /health               200 while the engine runs, 503 when it has stopped
    GET  /metrics              Prometheus text (requests, tokens, live rows, queue)

Every live request shares the engine's forward passes. A request is checked whole before it starts (bad values:
400 naming the field), then admitted by :class:`~decoders.serve.runner.Admission` (429 when the queue is full, or
it waits), then streamed or collected; a client that goes away aborts its engine requests and frees their rows.
Errors are OpenAI's JSON (``{"error": {"message", "type", "param", "code"}}``); no traceback reaches a client.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import logging
import secrets
import socket
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel, ValidationError

from decoders.engine import RequestEvent
from decoders.errors import DecodersError, GenerationError, StrategyError, validation_message
from decoders.results import GenerationResult
from decoders.serve import mapping
from decoders.serve.mapping import Plan
from decoders.serve.metrics import CONTENT_TYPE, Metrics
from decoders.serve.runner import Admission, EngineStopped, QueueFull, ServingEngine, ServingRunner
from decoders.serve.schemas import ApiError, ChatCompletionRequest, CompletionRequest, request_error

log = logging.getLogger("decoders.serve")

#: the largest request body read (bytes)
MAX_BODY_BYTES = 8 * 1024 * 1024


def api_error(error: BaseException) -> ApiError:
    """Any failure as the error a client gets (decoders' own messages for bad input; none of the internals)."""
    if isinstance(error, ApiError):
        return error
    if isinstance(error, QueueFull):
        return ApiError(429, str(error), code="queue_full", type="rate_limit_error")
    if isinstance(error, EngineStopped):
        return ApiError(503, str(error), code="engine_stopped")
    if isinstance(error, ValidationError):
        return ApiError(400, validation_message(error), code="invalid_value")
    if isinstance(error, GenerationError | StrategyError):
        message = str(error).replace("max_new_tokens", "max_tokens")
        param = "max_tokens" if "max_tokens" in message else None
        return ApiError(
            400,
            message,
            param=param,
            code="context_length_exceeded" if "context length" in message else "invalid_value",
        )
    if isinstance(error, DecodersError):  # e.g. the model gave NaN logits: the server's failure, said plainly
        return ApiError(500, f"{type(error).__name__}: {error}", code="generation_failed")
    log.error("internal error", exc_info=error)
    return ApiError(500, f"internal server error ({type(error).__name__}); the server logged it", code="internal_error")


def _error_response(error: ApiError):
    from starlette.responses import JSONResponse

    headers = {"Retry-After": "1"} if error.status == 429 else None
    return JSONResponse(error.body(), status_code=error.status, headers=headers)


def _sse(data: Any) -> str:
    return f"data: {json.dumps(data, ensure_ascii=False, separators=(',', ':'))}\n\n"


@dataclass(eq=False)
class _Sub:
    """One engine request of an HTTP request: prompt ``prompt`` (index), copy ``copy``."""

    prompt: int
    copy: int
    ticket: int | None = None
    request: int | None = None
    finished: bool = False
    result: GenerationResult | None = None


@dataclass(eq=False)
class Job:
    """The engine requests of one HTTP request, admitted together, their events on one queue.

    Args:
        server: the server.
        plan: what the request asks for.
        inputs: per prompt, the keyword arguments of :meth:`ServingEngine.add` besides the plan's (``prompt``, and
            ``messages`` for chat).
    """

    server: Server
    plan: Plan
    inputs: list[dict[str, Any]]
    subs: list[_Sub] = field(default_factory=list)
    events: asyncio.Queue = field(default_factory=asyncio.Queue)
    arrival: float = field(default_factory=time.perf_counter)
    first_token: bool = False
    closed: bool = False

    def __post_init__(self) -> None:
        self.subs = [_Sub(p, j) for p in range(len(self.inputs)) for j in range(self.plan.copies)]
        self._by_request: dict[int, _Sub] = {}
        self._admission = self.server.admission  # the one its tickets come from

    async def start(self) -> None:
        """Admit the engine requests (429 or wait when the queue is full), then add them to the engine."""
        server, plan = self.server, self.plan
        try:
            tickets = await self._admission.enter([plan.rows] * len(self.subs))
        except QueueFull:
            server.metrics.rejected += 1
            raise
        for sub, ticket in zip(self.subs, tickets):
            sub.ticket = ticket
        requests = [
            dict(strategy=plan.strategy, seed=plan.seed + sub.copy, max_new_tokens=plan.max_tokens, stop=plan.stop or None,
                 logprobs=plan.logprobs, ignore_eos=plan.ignore_eos, **self.inputs[sub.prompt])
            for sub in self.subs
        ]  # fmt: skip
        try:
            for sub, request in zip(self.subs, await server.runner.open(requests, self.events), strict=True):
                sub.request = request
                self._by_request[request] = sub
        except BaseException:
            self.close()
            raise

    @property
    def running(self) -> bool:
        return any(not sub.finished for sub in self.subs)

    async def next(self) -> tuple[_Sub, RequestEvent]:
        """The next event of any of its engine requests (an engine failure raises)."""
        event = await self.events.get()
        sub = self._by_request[event.request]
        if not self.first_token and (event.token_id is not None or event.finished):
            self.first_token = True
            self.server.metrics.first_token(time.perf_counter() - self.arrival)
        if event.finished:
            sub.finished, sub.result = True, event.result
            self._leave(sub)
        if event.error is not None:
            raise event.error
        return sub, event

    async def results(self) -> list[_Sub]:
        while self.running:
            await self.next()
        return self.subs

    def _leave(self, sub: _Sub) -> None:
        if sub.ticket is not None:
            self._admission.leave(sub.ticket)
            sub.ticket = None

    def close(self) -> None:
        """Abort what still runs (a client gone, a failure) and free its rows; count what finished."""
        if self.closed:
            return
        self.closed = True
        for sub in self.subs:
            if not sub.finished and sub.request is not None and self.server.runner.abort(sub.request):
                self.server.metrics.aborted += 1
            self._leave(sub)
        if not self.running and all(sub.result is not None for sub in self.subs):
            prompt_tokens, completion_tokens = self.token_counts()
            self.server.metrics.finished(time.perf_counter() - self.arrival, prompt_tokens, completion_tokens)

    def token_counts(self) -> tuple[int, int]:
        """(prompt tokens, completion tokens) as ``usage`` reports them: each prompt once, every choice's tokens."""
        prompts = {sub.prompt: len(sub.result.prompt_ids) for sub in self.subs if sub.result is not None}
        generated = sum(
            len(h.generated_ids) for sub in self.subs if sub.result is not None
            for h in mapping.choice_hypotheses(sub.result, self.plan)
        )  # fmt: skip
        return sum(prompts.values()), generated

    def choice_index(self, sub: _Sub, rank: int) -> int:
        """The OpenAI choice index of ``sub``'s hypothesis ``rank`` (prompt-major, as OpenAI numbers them)."""
        return sub.prompt * self.plan.choices + (sub.copy if self.plan.copies > 1 else rank)


class _EventStream:
    """A server-sent-event response that ends its job however the response ends, and notices at once a client
    that goes away (not only when the next event is written)."""

    def __init__(self, chunks: AsyncIterator[str], job: Job):
        from starlette.responses import StreamingResponse

        headers = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}
        self.response = StreamingResponse(chunks, media_type="text/event-stream", headers=headers)
        self.job = job

    async def __call__(self, scope, receive, send) -> None:
        import anyio

        try:
            async with anyio.create_task_group() as group:

                async def stream() -> None:
                    with contextlib.suppress(OSError):
                        await self.response.stream_response(send)
                    group.cancel_scope.cancel()

                group.start_soon(stream)
                await self.response.listen_for_disconnect(receive)
                group.cancel_scope.cancel()
        finally:
            self.job.close()


class Server:
    """The OpenAI-compatible endpoints over one engine.

    Args:
        engine: a :class:`ServingEngine` (its ``max_rows`` bounds the rows in use).
        model_name: the model id clients name (``GET /v1/models``); other names get 404.
        api_key: when set, ``/v1/*`` needs ``Authorization: Bearer <api_key>`` (401 otherwise).
        queue: the most engine requests waiting for rows; more get 429 (or wait, see ``queue_full``).
        queue_full: ``"reject"`` (429) or ``"wait"`` (the request waits in the server for room).

    Example:
        >>> server = Server(ServingEngine("path/to/model", max_rows=16), model_name="tiny")  # doctest: +SKIP
        >>> app = server.app()  # any ASGI server runs it; `decoders serve` runs it with uvicorn  # doctest: +SKIP
    """

    def __init__(
        self, engine: ServingEngine, *, model_name: str, api_key: str | None = None, queue: int = 64,
        queue_full: str = "reject",
    ):  # fmt: skip
        if engine.max_rows is None:
            raise GenerationError("a served engine needs max_rows (a bound on the rows in use), got None")
        self.engine = engine
        self.runner = ServingRunner(engine)
        self.model_name = model_name
        self.api_key = api_key
        self.admission = Admission(engine.max_rows, queue, queue_full)
        self.metrics = Metrics()
        self.created = int(time.time())
        self.fingerprint = f"decoders-{_version()}"

    # ---- the app -----------------------------------------------------------------------------------------------

    def app(self):
        """The Starlette application (its shutdown stops the engine's thread)."""
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.routing import Route

        async def http_error(request, exc: HTTPException):
            message = f"{request.method} {request.url.path}: {exc.detail}"
            if exc.status_code == 404:
                message += " (the endpoints: /v1/models, /v1/completions, /v1/chat/completions, /health, /metrics)"
            return _error_response(
                ApiError(exc.status_code, message, code="not_found" if exc.status_code == 404 else None)
            )

        async def any_error(request, exc: Exception):
            return _error_response(api_error(exc))

        @contextlib.asynccontextmanager
        async def lifespan(app) -> AsyncIterator[None]:
            yield
            await asyncio.to_thread(self.runner.close)

        routes = [
            Route("/v1/models", self._endpoint("/v1/models", self.models), methods=["GET"]),
            Route("/v1/models/{model:path}", self._endpoint("/v1/models", self.model), methods=["GET"]),
            Route("/v1/completions", self._endpoint("/v1/completions", self.completions), methods=["POST"]),
            Route(
                "/v1/chat/completions", self._endpoint("/v1/chat/completions", self.chat_completions), methods=["POST"]
            ),
            Route("/health", self.health, methods=["GET"]),
            Route("/metrics", self.prometheus, methods=["GET"]),
        ]
        return Starlette(
            routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error, Exception: any_error}
        )

    def _endpoint(self, name: str, handler):
        """``handler`` behind the key check, with every failure answered as an OpenAI error and counted."""

        async def endpoint(request):
            try:
                self._authorize(request)
                response = await handler(request)
            except Exception as exc:  # noqa: BLE001 - every failure becomes a JSON error; the server goes on
                response = _error_response(api_error(exc))
            status = response.response.status_code if isinstance(response, _EventStream) else response.status_code
            self.metrics.answered(name, status)
            return response

        return endpoint

    def _authorize(self, request) -> None:
        if self.api_key is None:
            return
        header = request.headers.get("authorization", "")
        scheme, _, key = header.partition(" ")
        if not header:
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer <key>' (the server's --api-key)",
                           code="invalid_api_key")  # fmt: skip
        if scheme.lower() != "bearer" or not hmac.compare_digest(key.strip().encode(), self.api_key.encode()):
            raise ApiError(401, "incorrect API key: send the server's --api-key as 'Authorization: Bearer <key>'",
                           code="invalid_api_key")  # fmt: skip

    # ---- endpoints ---------------------------------------------------------------------------------------------

    def _model_card(self) -> dict[str, Any]:
        return {"id": self.model_name, "object": "model", "created": self.created, "owned_by": "decoders"}

    async def models(self, request):
        from starlette.responses import JSONResponse

        return JSONResponse({"object": "list", "data": [self._model_card()]})

    async def model(self, request):
        from starlette.responses import JSONResponse

        self._check_model(request.path_params["model"])
        return JSONResponse(self._model_card())

    async def health(self, request):
        from starlette.responses import JSONResponse

        if not self.runner.alive:
            return JSONResponse({"status": "stopped"}, status_code=503)
        return JSONResponse({"status": "ok"})

    async def prometheus(self, request):
        from starlette.responses import Response

        engine, admission = self.engine, self.admission
        gauges = {
            "decoders_live_rows": ("Batch rows in use.", engine.live_rows),
            "decoders_max_rows": ("The most batch rows in use at once (--max-rows).", engine.max_rows),
            "decoders_queued_requests": ("Engine requests waiting for rows.", engine.queued),
            "decoders_running_requests": ("Engine requests with rows (the server's count).", admission.running),
            "decoders_held_requests": ("Requests waiting in the server for room in the queue (--queue-full wait).",
                                       admission.held),
            "decoders_queue_limit": ("The most engine requests that may wait for rows (--queue).", admission.queue),
        }  # fmt: skip
        return Response(self.metrics.render(gauges), media_type=CONTENT_TYPE)

    async def completions(self, request):
        body = await self._body(request, CompletionRequest)
        if body.suffix:
            raise ApiError(400, "suffix is not supported: this server continues a prompt, it does not fill in",
                           param="suffix", code="unsupported_parameter")  # fmt: skip
        if body.echo and body.logprobs is not None:
            raise ApiError(400, "echo with logprobs is not supported (the prompt's log-probabilities are not computed)",
                           param="echo", code="unsupported_parameter")  # fmt: skip
        prompts = [body.prompt] if isinstance(body.prompt, str) else body.prompt
        if not prompts:
            raise ApiError(
                400, "prompt: give a string or a non-empty list of strings", param="prompt", code="invalid_value"
            )
        plan = mapping.plan_request(body, chat=False, seed=self._seed(body))
        job = Job(self, plan, [{"prompt": prompt} for prompt in prompts])
        await self._start(job, "prompt")
        ident = f"cmpl-{uuid.uuid4().hex}"
        if body.stream:
            return self._stream(job, self._completion_chunks(job, body, ident, prompts))
        choices = [
            {"index": index, "text": (prompts[sub.prompt] if body.echo else "") + hypothesis.text,
             "logprobs": None if steps is None
             else mapping.completion_logprobs(steps, plan.logprobs, len(prompts[sub.prompt])),
             "finish_reason": mapping.finish_reason(hypothesis.finish_reason)}
            for sub, index, hypothesis, steps in self._ranked(job, await self._collect(job, request), plan)
        ]  # fmt: skip
        return self._response(ident, "text_completion", choices, job)

    async def chat_completions(self, request):
        body = await self._body(request, ChatCompletionRequest)
        if (
            body.tools
            or body.functions
            or body.tool_choice not in (None, "none")
            or body.function_call not in (None, "none")
        ):
            param = "tools" if body.tools or body.tool_choice not in (None, "none") else "functions"
            raise ApiError(400, f"{param}: tool calling is not supported by this server", param=param,
                           code="unsupported_parameter")  # fmt: skip
        if body.modalities and body.modalities != ["text"]:
            raise ApiError(400, "modalities: only text is supported", param="modalities", code="unsupported_value")
        plan = mapping.plan_request(body, chat=True, seed=self._seed(body))
        job = Job(self, plan, [{"prompt": "", "messages": mapping.chat_messages(body.messages)}])
        await self._start(job, "messages")
        ident = f"chatcmpl-{uuid.uuid4().hex}"
        if body.stream:
            return self._stream(job, self._chat_chunks(job, body, ident))
        choices = [
            {"index": index, "message": {"role": "assistant", "content": hypothesis.text, "refusal": None},
             "logprobs": None if steps is None else mapping.chat_logprobs(steps, plan.logprobs),
             "finish_reason": mapping.finish_reason(hypothesis.finish_reason)}
            for _, index, hypothesis, steps in self._ranked(job, await self._collect(job, request), plan)
        ]  # fmt: skip
        return self._response(ident, "chat.completion", choices, job)

    # ---- helpers -----------------------------------------------------------------------------------------------

    def _ranked(self, job, subs, plan):
        """Every choice of a finished request: ``(sub-request, choice index, hypothesis, its visible log-prob steps
        or None)``."""
        for sub in subs:
            for rank, hypothesis in enumerate(mapping.choice_hypotheses(sub.result, plan)):
                steps = None
                if plan.logprobs is not None:
                    steps = mapping.visible_logprobs(hypothesis, self.engine.eos_token_ids)
                yield sub, job.choice_index(sub, rank), hypothesis, steps

    def _response(self, ident: str, kind: str, choices: list[dict], job):
        """A non-streamed response: its choices in index order and the usage."""
        return self._json({
            "id": ident, "object": kind, "created": int(time.time()), "model": self.model_name,
            "system_fingerprint": self.fingerprint, "choices": sorted(choices, key=lambda c: c["index"]),
            "usage": mapping.usage(*job.token_counts()),
        })  # fmt: skip

    async def _body(self, request, schema: type[BaseModel]) -> Any:
        """The JSON body, read (bounded), parsed and validated; 400 naming the field otherwise; 404 for a model
        this server does not serve."""
        raw = bytearray()
        async for chunk in request.stream():
            raw += chunk
            if len(raw) > MAX_BODY_BYTES:
                raise ApiError(413, f"the request body is larger than {MAX_BODY_BYTES} bytes", code="request_too_large")
        try:
            data = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ApiError(400, f"the request body is not valid JSON: {exc}", code="invalid_json") from None
        if not isinstance(data, dict):
            raise ApiError(
                400, f"the request body must be a JSON object, got {type(data).__name__}", code="invalid_json"
            )
        try:
            body = schema.model_validate(data)
        except ValidationError as exc:
            raise request_error(exc) from None
        self._check_model(body.model)
        return body

    def _check_model(self, name: str | None) -> None:
        if name is not None and name != self.model_name:
            raise ApiError(404, f"the model '{name}' does not exist: this server serves '{self.model_name}' "
                           "(GET /v1/models)", param="model", code="model_not_found")  # fmt: skip

    @staticmethod
    def _seed(body: Any) -> int:
        """The request's seed, or a random one (so that each of its engine requests has a generator of its own)."""
        return body.seed if body.seed is not None else secrets.randbits(62)

    async def _start(self, job: Job, prompt_field: str) -> None:
        """Start the job; an error about the prompt names the prompt's field."""
        try:
            await job.start()
        except (GenerationError, StrategyError) as exc:
            error = api_error(exc)
            if error.param is None and ("prompt" in error.message or "chat template" in error.message):
                error.param = prompt_field
            raise error from None

    async def _collect(self, job: Job, request) -> list[_Sub]:
        """Run the job to its end; a client that goes away meanwhile aborts it."""
        results = asyncio.ensure_future(job.results())
        gone = asyncio.ensure_future(_disconnected(request))
        try:
            done, _ = await asyncio.wait({results, gone}, return_when=asyncio.FIRST_COMPLETED)
            if results not in done:  # nobody reads the answer: it only ends the request
                results.cancel()
                raise ApiError(499, "the client closed the request before its end", code="client_closed_request")
            return results.result()
        finally:
            gone.cancel()
            job.close()

    def _json(self, data: dict[str, Any]):
        from starlette.responses import JSONResponse

        return JSONResponse(data)

    def _stream(self, job: Job, chunks: AsyncIterator[str]) -> _EventStream:
        return _EventStream(chunks, job)

    def _chunk(self, job: Job, ident: str, kind: str, choices: list[dict[str, Any]], include_usage: bool) -> str:
        data = {"id": ident, "object": kind, "created": int(time.time()), "model": self.model_name,
                "system_fingerprint": self.fingerprint, "choices": choices}  # fmt: skip
        if include_usage:
            data["usage"] = None
        return _sse(data)

    async def _streamed(
        self, job: Job, ident: str, kind: str, include_usage: bool, delta, finish
    ) -> AsyncIterator[str]:
        """The chunks of a stream: ``delta(index, text)`` per piece of text as it comes, ``finish(index, hypothesis)``
        per choice at its end (a search that shows no tokens until its end sends each choice's text then), the
        usage chunk if asked, ``[DONE]``; an engine failure is sent as an error event."""
        sent: dict[int, str] = {}
        try:
            while job.running:
                sub, event = await job.next()
                if event.text:
                    index = job.choice_index(sub, 0)
                    sent[index] = sent.get(index, "") + event.text
                    yield self._chunk(job, ident, kind, [delta(index, event.text)], include_usage)
                if event.finished and sub.result is not None:
                    for rank, hypothesis in enumerate(mapping.choice_hypotheses(sub.result, job.plan)):
                        index = job.choice_index(sub, rank)
                        shown = sent.get(index, "")
                        rest = hypothesis.text.removeprefix(shown)  # all of it for a choice that showed nothing
                        if rest:
                            yield self._chunk(job, ident, kind, [delta(index, rest)], include_usage)
                        yield self._chunk(job, ident, kind, [finish(index, hypothesis)], include_usage)
            if include_usage:
                data = {"id": ident, "object": kind, "created": int(time.time()), "model": self.model_name,
                        "system_fingerprint": self.fingerprint, "choices": [], "usage": mapping.usage(*job.token_counts())}  # fmt: skip
                yield _sse(data)
            yield "data: [DONE]\n\n"
        except Exception as exc:  # noqa: BLE001 - a failure after the first byte: an error event ends the stream
            yield _sse(api_error(exc).body())
            yield "data: [DONE]\n\n"
        finally:
            job.close()

    def _completion_chunks(
        self, job: Job, body: CompletionRequest, ident: str, prompts: list[str]
    ) -> AsyncIterator[str]:
        plan = job.plan
        include_usage = bool(body.stream_options and body.stream_options.include_usage)
        echoed: set[int] = set()

        def delta(index: int, text: str) -> dict[str, Any]:
            if body.echo and index not in echoed:
                echoed.add(index)
                text = prompts[index // plan.choices] + text
            return {"index": index, "text": text, "logprobs": None, "finish_reason": None}

        def finish(index: int, hypothesis) -> dict[str, Any]:
            logprobs = None
            if plan.logprobs is not None:  # the request's log-probabilities come with its end
                steps = mapping.visible_logprobs(hypothesis, self.engine.eos_token_ids)
                logprobs = mapping.completion_logprobs(steps, plan.logprobs, len(prompts[index // plan.choices]))
            text = prompts[index // plan.choices] if body.echo and index not in echoed else ""
            echoed.add(index)
            return {
                "index": index,
                "text": text,
                "logprobs": logprobs,
                "finish_reason": mapping.finish_reason(hypothesis.finish_reason),
            }

        return self._streamed(job, ident, "text_completion", include_usage, delta, finish)

    def _chat_chunks(self, job: Job, body: ChatCompletionRequest, ident: str) -> AsyncIterator[str]:
        plan = job.plan
        include_usage = bool(body.stream_options and body.stream_options.include_usage)

        def delta(index: int, text: str) -> dict[str, Any]:
            return {"index": index, "delta": {"content": text}, "logprobs": None, "finish_reason": None}

        def finish(index: int, hypothesis) -> dict[str, Any]:
            logprobs = None
            if plan.logprobs is not None:
                logprobs = mapping.chat_logprobs(
                    mapping.visible_logprobs(hypothesis, self.engine.eos_token_ids), plan.logprobs
                )
            return {
                "index": index,
                "delta": {},
                "logprobs": logprobs,
                "finish_reason": mapping.finish_reason(hypothesis.finish_reason),
            }

        async def chunks() -> AsyncIterator[str]:
            roles = [{"index": i, "delta": {"role": "assistant", "content": ""}, "logprobs": None, "finish_reason": None}
                     for i in range(plan.choices)]  # fmt: skip
            for role in roles:
                yield self._chunk(job, ident, "chat.completion.chunk", [role], include_usage)
            async for chunk in self._streamed(job, ident, "chat.completion.chunk", include_usage, delta, finish):
                yield chunk

        return chunks()


async def _disconnected(request) -> None:
    """Return when the client of a (non-streaming) request has gone away."""
    while True:
        message = await request.receive()
        if message["type"] == "http.disconnect":
            return


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("decoders-lab")
    except PackageNotFoundError:
        return "dev"


def create_app(
    model: Any = None, *, model_name: str | None = None, api_key: str | None = None, max_rows: int = 16, queue: int = 64,
    queue_full: str = "reject",
):  # fmt: skip
    """The server's ASGI app for ``model`` (None: the embedded model; a name, folder, ``LoadedModel`` or
    ``(model, tokenizer)`` pair), with :class:`Server`'s options; ``app.state.server`` is the :class:`Server`.

    Example:
        >>> app = create_app("path/to/model", max_rows=8)  # doctest: +SKIP
        >>> with running(app) as base_url:  # doctest: +SKIP
        ...     openai.OpenAI(base_url=base_url + "/v1", api_key="-").completions.create(model=..., prompt="Hi")
    """
    from decoders.models import EMBEDDED_NAME

    engine = ServingEngine(model, max_rows=max_rows)
    if model_name is None:  # the embedded model's id without its " (embedded)": one word for clients to send
        model_name = "SmolLM2-135M-Instruct" if engine.loaded.name == EMBEDDED_NAME else engine.loaded.name
    server = Server(engine, model_name=model_name, api_key=api_key, queue=queue, queue_full=queue_full)
    app = server.app()
    app.state.server = server
    return app


@contextlib.contextmanager
def running(app: Any, host: str = "127.0.0.1", port: int = 0, log_level: str = "warning") -> Iterator[str]:
    """Serve ``app`` with uvicorn in a background thread (port 0: a free one); yields its base URL, e.g.
    ``http://127.0.0.1:54321``, and stops the server on leaving."""
    import uvicorn

    listener = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind((host, port))
    server = uvicorn.Server(uvicorn.Config(app, log_level=log_level, lifespan="on", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [listener]}, name="decoders-serve", daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("the server did not start")
        time.sleep(0.01)
    try:
        yield f"http://{host}:{listener.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        listener.close()
