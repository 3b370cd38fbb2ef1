"""Prometheus metrics (served at `/metrics`).

Latencies are measured by the runtime from what it sends: the wall time between the events that
bound each stage (end of speech -> transcript, LLM request -> first token, clause -> first audio,
end of speech -> first audio delta, barge-in -> the cancelled response's end).
"""

from __future__ import annotations

import functools

from prometheus_client import Counter, Gauge, Histogram

_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)

SESSIONS_LIVE = Gauge("parley_sessions_live", "Sessions open now")
SESSIONS_TOTAL = Counter("parley_sessions_total", "Sessions opened", ["transport"])
EVENTS_IN = Counter("parley_client_events_total", "Client events received, by type", ["type"])
EVENTS_OUT = Counter("parley_server_events_total", "Server events sent, by type", ["type"])
ERRORS = Counter("parley_errors_total", "Error events sent, by code", ["code"])
RESPONSES = Counter("parley_responses_total", "Responses finished, by status", ["status"])
SLOW_CLIENTS = Counter("parley_slow_client_closes_total", "Sessions closed because the client did not read")
SESSIONS_REFUSED = Counter("parley_sessions_refused_total", "New sessions refused, by reason", ["reason"])
LOOP_CPU = Gauge("parley_loop_cpu_share", "The event loop thread's CPU time over wall time, over the overload window")
LOOP_LAG = Gauge("parley_loop_lag_seconds", "95th percentile of the event loop's lag, over the overload window")
OVERLOADED = Gauge("parley_overloaded", "1 while new sessions are refused because the event loop is overloaded")

STT_LATENCY = Histogram("parley_stt_seconds", "End of speech to final transcript", buckets=_BUCKETS)
LLM_TTFT = Histogram("parley_llm_first_token_seconds", "LLM request to first token", buckets=_BUCKETS)
TTS_FIRST_AUDIO = Histogram("parley_tts_first_audio_seconds", "Clause to its first audio", buckets=_BUCKETS)
SPEECH_TO_AUDIO = Histogram("parley_speech_end_to_first_audio_seconds",
                            "End of user speech to the first audio delta of the answer", buckets=_BUCKETS)
BARGE_IN = Histogram("parley_barge_in_seconds", "Speech started to the cancelled response's last event",
                     buckets=_BUCKETS)


@functools.cache
def _child(counter: Counter, label: str) -> Counter:
    return counter.labels(label)


def count(counter: Counter, label: str) -> None:
    """`counter.labels(label).inc()`, with the labelled child looked up once: every client and
    server event is counted, and `labels()` costs three times the increment."""
    _child(counter, label).inc()
