"""The core's inputs and outputs.  The runtime feeds inputs to `Session.handle` and carries out
the outputs in order: it sends `Send` events, runs `StartResponse` pipelines, cancels on
`StopResponse`, and so on.  Everything here is plain data."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from .chat import ChatRequest, Usage

# ---- outputs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Send:
    """A server event, ready to serialise (dialect already applied)."""

    event: dict[str, Any]


@dataclass(frozen=True)
class ResponsePlan:
    """How the runtime should produce a response: the model request, and for audio the voice,
    speed and wire format of the speech."""

    request: ChatRequest
    modality: str  # "text" or "audio"
    voice: str
    speed: float
    output_format: dict[str, Any]
    # the language the TTS speaks: the session's `audio.input.transcription.language`, else the one
    # the STT engine detected in the latest user turn (None: the voice's own)
    language: str | None = None


@dataclass(frozen=True)
class StartResponse:
    response_id: str
    plan: ResponsePlan


@dataclass(frozen=True)
class StopResponse:
    """Stop the response's model and speech work now; the core has already finished it."""

    response_id: str


@dataclass(frozen=True)
class SessionChanged:
    """The effective session changed (turn detection, formats, voice...)."""

    session: dict[str, Any]


@dataclass(frozen=True)
class UsageReport:
    """Tokens a finished response used, for rate limits.  The runtime answers with
    `rate_limits.updated`."""

    response_id: str
    total_tokens: int


@dataclass(frozen=True)
class Close:
    code: int
    reason: str


@dataclass(frozen=True)
class DetectSpeech:
    """Run voice activity detection on freshly appended audio (in `fmt`) and hand the speech
    probabilities back as a `VadResult` before the next input (none when the audio completed no
    VAD window: an empty result changes nothing).  `fmt` is the session's own dict: read it only."""

    audio: bytes
    fmt: dict[str, Any]


@dataclass(frozen=True)
class Transcribe:
    """Transcribe user audio.  For an item (`item_id`), answer with TranscriptDelta/Done/Failed;
    for semantic turn detection (`turn`), answer with TurnTranscript."""

    audio: bytes
    fmt: dict[str, Any]
    config: dict[str, Any] | None
    item_id: str | None = None
    turn: int | None = None


@dataclass(frozen=True)
class ClearPlayout:
    """Media sessions (WebRTC): stop playing response audio now and drop what is queued; answer
    with `PlayoutCleared`."""


@dataclass(frozen=True)
class ListMcpTools:
    """Connect to a remote MCP server (or reuse the session's client for its label) and list its
    tools; answer with `McpToolsListed`.  `server` is the session's `mcp` tool definition
    (`server_label`, `server_url`, `headers`, `authorization`)."""

    item_id: str
    server: dict[str, Any]


@dataclass(frozen=True)
class CallMcpTool:
    """Call tool `name` on an MCP server for response `response_id`; answer with
    `McpToolResult`.  Stopping the response (`StopResponse`) abandons the call."""

    response_id: str
    item_id: str
    server: dict[str, Any]
    name: str
    arguments: dict[str, Any]


Output = (Send | StartResponse | StopResponse | SessionChanged | UsageReport | Close | DetectSpeech | Transcribe
          | ClearPlayout | ListMcpTools | CallMcpTool)

# ---- inputs from the runtime -----------------------------------------------------------------


@dataclass(frozen=True)
class ModelText:
    response_id: str
    text: str


@dataclass(frozen=True)
class ModelToolCall:
    response_id: str
    index: int
    arguments: str = ""
    name: str | None = None


@dataclass(frozen=True)
class ModelAudio:
    """A spoken chunk: audio in the response's output format, the words it speaks, and its
    length in milliseconds."""

    response_id: str
    audio: bytes
    transcript: str
    duration_ms: float


@dataclass(frozen=True)
class ModelDone:
    response_id: str
    reason: str = "stop"
    usage: Usage | None = None


@dataclass(frozen=True)
class ModelFailed:
    response_id: str
    message: str
    code: str = "engine_error"


@dataclass(frozen=True)
class Expired:
    """The session reached `expires_at`."""


@dataclass(frozen=True)
class VadResult:
    """Speech probabilities, one per VAD window of `window_ms`, in audio order."""

    probabilities: list[float]
    window_ms: float


@dataclass(frozen=True)
class TranscriptDelta:
    item_id: str
    text: str


@dataclass(frozen=True)
class TranscriptDone:
    item_id: str
    text: str
    usage: dict[str, Any] | None = None
    language: str | None = None  # the language the STT engine detected (or was told), if it says


@dataclass(frozen=True)
class TranscriptFailed:
    item_id: str
    message: str
    code: str = "transcription_error"


@dataclass(frozen=True)
class TurnTranscript:
    turn: int
    text: str


@dataclass(frozen=True)
class MediaAudio:
    """Microphone audio from a media track (WebRTC), already in the session's input format."""

    audio: bytes


@dataclass(frozen=True)
class PlayoutStarted:
    """The first audio of a response began playing on the media track."""

    response_id: str


@dataclass(frozen=True)
class PlayoutStopped:
    """A finished response's audio has all been played."""

    response_id: str


@dataclass(frozen=True)
class PlayoutCleared:
    """Playout stopped early (`ClearPlayout`).  `response_id` is None when nothing was playing;
    otherwise `played_ms` of the item's content part had been played when it stopped."""

    response_id: str | None = None
    item_id: str | None = None
    content_index: int = 0
    played_ms: float = 0.0


@dataclass(frozen=True)
class DtmfReceived:
    """A keypad press from a SIP caller (RFC 4733): `event` is "0"-"9", "*", "#" or "A"-"D";
    `received_at` the Unix time in seconds when it arrived."""

    event: str
    received_at: int


@dataclass(frozen=True)
class McpToolsListed:
    """The tools an MCP server offers (`tools`: name, input_schema, description?, annotations?),
    or why listing failed (`error`)."""

    item_id: str
    tools: list[dict[str, Any]] | None = None
    error: str | None = None


@dataclass(frozen=True)
class McpToolResult:
    """An MCP tool call's text `output`, or its `error` (an `mcp_call` item error object:
    `{type: protocol_error|tool_execution_error|http_error, code?, message}`)."""

    item_id: str
    output: str | None = None
    error: dict[str, Any] | None = None


RuntimeInput = (VadResult | TranscriptDelta | TranscriptDone | TranscriptFailed | TurnTranscript | ModelText | ModelToolCall | ModelAudio | ModelDone | ModelFailed | Expired
                | MediaAudio | PlayoutStarted | PlayoutStopped | PlayoutCleared | DtmfReceived | McpToolsListed | McpToolResult)
