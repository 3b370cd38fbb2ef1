"""An LLM engine for any OpenAI-compatible chat-completions server.

vLLM, llama.cpp's `llama-server`, Ollama, LM Studio and OpenAI itself all speak
`POST {base_url}/chat/completions` with SSE streaming.  This engine streams from such a server
through the official `openai` client and translates every provider failure into `EngineError`.

The client's own retry (with backoff) covers connection errors, timeouts, 408/409/429 and 5xx
*before* the stream starts; once tokens flow, a failure is reported rather than retried, since
the consumer has already seen part of the answer.
"""

from __future__ import annotations

import json
import logging
from collections.abc import AsyncIterator
from typing import Any

import openai
import pydantic
from openai.types.chat import ChatCompletion, ChatCompletionChunk

from parley.core.chat import ChatRequest, Usage
from parley.engines.errors import EngineError
from parley.engines.llm import Finished, LLMEvent, TextDelta, ToolCallDelta
from parley.engines.openai_common import KeylessRepr, make_client, map_error

log = logging.getLogger(__name__)


class OpenAICompatibleLLM(KeylessRepr):
    """Streams chat completions from `base_url` (e.g. "http://127.0.0.1:8080/v1") using `model`.

    `ChatRequest.model` (the realtime model alias the client asked for) is ignored: the engine
    always sends its configured `model`.
    """

    name = "openai"

    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        *,
        timeout_s: float = 60.0,
        max_retries: int = 2,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.timeout_s = timeout_s
        self._client = make_client(self.base_url, api_key, timeout_s, max_retries)

    async def aclose(self) -> None:
        await self._client.close()

    def _params(self, request: ChatRequest) -> dict[str, Any]:
        params: dict[str, Any] = {
            "model": self.model,
            "messages": request.messages,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        if request.tools:
            params["tools"] = request.tools
            if request.tool_choice is not None:
                params["tool_choice"] = request.tool_choice
        if request.max_tokens is not None:
            params["max_tokens"] = request.max_tokens
        if request.temperature is not None:
            params["temperature"] = request.temperature
        return params

    async def stream(self, request: ChatRequest) -> AsyncIterator[LLMEvent]:
        """Yield text and tool-call deltas, then exactly one `Finished`.

        Closing this generator (or cancelling the task consuming it) closes the HTTP stream, which
        makes the server stop generating.  Consumers that stop early should close it explicitly
        (`contextlib.aclosing`) rather than leave it to the garbage collector.
        """
        try:
            # The client's generic `post` (its documented way to reach any endpoint) rather than
            # `chat.completions.create`: that one first walks every message through the SDK's
            # TypedDict transform, ~2 ms of CPU for 10 messages and growing with the conversation,
            # to change nothing in our plain dicts.  Retries, auth, errors and SSE parsing are the same.
            stream = await self._client.post("/chat/completions", body=self._params(request), cast_to=ChatCompletion,
                                             stream=True, stream_cls=openai.AsyncStream[ChatCompletionChunk])
        except Exception as exc:
            raise self._error(exc, started=False) from exc

        finish_reason: str | None = None
        usage: Usage | None = None
        saw_tool_call = False
        try:
            try:
                async for chunk in stream:
                    # getattr: lenient servers omit fields the OpenAI schema calls required.
                    if (raw_usage := getattr(chunk, "usage", None)) is not None:
                        usage = _usage(raw_usage)
                    for choice in getattr(chunk, "choices", None) or ():
                        if getattr(choice, "index", 0) != 0:  # we never ask for n > 1
                            continue
                        delta = getattr(choice, "delta", None)
                        if text := getattr(delta, "content", None):
                            yield TextDelta(text)
                        for call in getattr(delta, "tool_calls", None) or ():
                            saw_tool_call = True
                            yield _tool_call_delta(call)
                        if reason := getattr(choice, "finish_reason", None):
                            finish_reason = reason
            except Exception as exc:
                raise self._error(exc, started=True) from exc
        finally:
            try:
                await stream.close()
            except Exception:  # pragma: no cover - closing a dead connection
                log.debug("error closing LLM stream from %s", self.base_url, exc_info=True)

        if finish_reason is None:
            raise EngineError(
                f"{self._where()} ended the stream without a finish_reason (connection cut?)",
                code="llm_stream_incomplete",
                retryable=True,
            )
        if saw_tool_call and finish_reason in ("stop", "function_call"):
            finish_reason = "tool_calls"  # some servers (older Ollama/llama.cpp) say "stop"
        yield Finished(reason=finish_reason, usage=usage)

    def _where(self) -> str:
        return f"LLM server {self.base_url} (model {self.model!r})"

    def _error(self, exc: Exception, *, started: bool) -> EngineError:
        """Translate an `openai` (or decoding) exception into an `EngineError`."""
        if isinstance(exc, openai.APIResponseValidationError | json.JSONDecodeError | pydantic.ValidationError):
            return EngineError(f"{self._where()} sent a malformed response: {exc}", code="llm_bad_stream")
        # Raw httpx errors are not timeouts/connection errors here, and the cause is shown with str().
        return map_error(exc, where=self._where(), prefix="llm", timeout_s=self.timeout_s, started=started,
                         malformed_code="llm_bad_stream", httpx_errors=False, repr_cause=False,
                         fastapi_detail=False)  # fmt: skip


def _usage(raw: Any) -> Usage:
    details = getattr(raw, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None) or 0
    return Usage(
        input_tokens=getattr(raw, "prompt_tokens", None) or 0,
        output_tokens=getattr(raw, "completion_tokens", None) or 0,
        cached_tokens=cached,
    )


def _tool_call_delta(call: Any) -> ToolCallDelta:
    function = getattr(call, "function", None)
    return ToolCallDelta(
        index=getattr(call, "index", None) or 0,
        id=getattr(call, "id", None) or None,
        name=getattr(function, "name", None) or None,
        arguments=getattr(function, "arguments", None) or "",
    )
