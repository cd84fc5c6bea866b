"""The server's counters and gauges, written in Prometheus' text format (``GET /metrics``).

decoders_requests_total{endpoint, status}        HTTP requests answered
decoders_prompt_tokens_total                     prompt tokens of the requests that ran
decoders_generation_tokens_total                 tokens generated (what the clients were sent, or would be)
decoders_aborted_requests_total                  engine requests ended because their client went away
decoders_rejected_requests_total                 requests refused because the queue was full (429)
decoders_time_to_first_token_seconds_{sum,count} from a request's arrival to its first token
decoders_request_seconds_{sum,count}             from a request's arrival to its end
decoders_live_rows / decoders_max_rows           batch rows in use / the bound (--max-rows)
decoders_queued_requests                         engine requests waiting for rows
decoders_held_requests                           requests waiting in the server for room (--queue-full wait)
decoders_running_requests                        engine requests with rows
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field

#: the content type of Prometheus' text exposition format
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


@dataclass
class Metrics:
    """What the server counts (one event loop updates it: no locking).

    Example:
        >>> metrics = Metrics()
        >>> metrics.answered("/v1/completions", 200)
        >>> 'decoders_requests_total{endpoint="/v1/completions",status="200"} 1' in metrics.render({})
        True
    """

    requests: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    generation_tokens: int = 0
    aborted: int = 0
    rejected: int = 0
    first_token_seconds: float = 0.0
    first_tokens: int = 0
    request_seconds: float = 0.0
    finished_requests: int = 0

    def answered(self, endpoint: str, status: int) -> None:
        self.requests[(endpoint, status)] += 1

    def first_token(self, seconds: float) -> None:
        self.first_token_seconds += seconds
        self.first_tokens += 1

    def finished(self, seconds: float, prompt_tokens: int, generated_tokens: int) -> None:
        self.request_seconds += seconds
        self.finished_requests += 1
        self.prompt_tokens += prompt_tokens
        self.generation_tokens += generated_tokens

    def render(self, gauges: dict[str, tuple[str, float]]) -> str:
        """The text format: these counters, then ``gauges`` (name → (help, value))."""
        lines: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[str, float]]) -> None:
            lines.extend([f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"])
            lines.extend(f"{name}{labels} {value:g}" if isinstance(value, float) else f"{name}{labels} {value}"
                         for labels, value in samples)  # fmt: skip

        requests = [
            (f'{{endpoint="{endpoint}",status="{status}"}}', count)
            for (endpoint, status), count in sorted(self.requests.items())
        ]
        metric("decoders_requests_total", "counter", "HTTP requests answered, by endpoint and status code.", requests)
        metric(
            "decoders_prompt_tokens_total",
            "counter",
            "Prompt tokens of the requests that ran.",
            [("", self.prompt_tokens)],
        )
        metric("decoders_generation_tokens_total", "counter", "Tokens generated.", [("", self.generation_tokens)])
        metric("decoders_aborted_requests_total", "counter", "Engine requests aborted because their client went away.",
               [("", self.aborted)])  # fmt: skip
        metric("decoders_rejected_requests_total", "counter", "Requests refused because the queue was full (429).",
               [("", self.rejected)])  # fmt: skip
        metric("decoders_time_to_first_token_seconds", "summary", "Seconds from a request's arrival to its first token.",
               [("_sum", float(self.first_token_seconds)), ("_count", self.first_tokens)])  # fmt: skip
        metric("decoders_request_seconds", "summary", "Seconds from a request's arrival to its end.",
               [("_sum", float(self.request_seconds)), ("_count", self.finished_requests)])  # fmt: skip
        for name, (help_text, value) in gauges.items():
            metric(name, "gauge", help_text, [("", value)])
        return "\n".join(lines) + "\n"
