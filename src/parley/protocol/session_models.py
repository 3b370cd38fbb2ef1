"""Strict models of the session configuration a client may send (GA and beta).

Every field is optional here because `session.update` is a partial update; `session_config.py`
merges updates onto the effective session and fills defaults.  Field sets follow the `openai`
package's `*Param` types (GA `types/realtime/`, beta `types/beta/realtime/`).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field

from .strict import Strict

# ---- audio formats ---------------------------------------------------------------------------


class AudioPCM(Strict):
    type: Literal["audio/pcm"] = "audio/pcm"
    rate: Annotated[int, Field(ge=24000, le=24000)] = 24000


class AudioPCMU(Strict):
    type: Literal["audio/pcmu"] = "audio/pcmu"


class AudioPCMA(Strict):
    type: Literal["audio/pcma"] = "audio/pcma"


AudioFormat = Annotated[Union[AudioPCM, AudioPCMU, AudioPCMA], Field(discriminator="type")]
BetaAudioFormat = Literal["pcm16", "g711_ulaw", "g711_alaw"]

# ---- turn detection --------------------------------------------------------------------------


class ServerVad(Strict):
    type: Literal["server_vad"] = "server_vad"
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    prefix_padding_ms: Annotated[int, Field(ge=0, le=10_000)] = 300
    silence_duration_ms: Annotated[int, Field(ge=0, le=10_000)] = 200
    idle_timeout_ms: Annotated[int, Field(ge=5000, le=30000)] | None = None
    create_response: bool = True
    interrupt_response: bool = True


class SemanticVad(Strict):
    type: Literal["semantic_vad"] = "semantic_vad"
    eagerness: Literal["low", "medium", "high", "auto"] = "auto"
    create_response: bool = True
    interrupt_response: bool = True


TurnDetection = Annotated[Union[ServerVad, SemanticVad], Field(discriminator="type")]

# ---- input processing ------------------------------------------------------------------------


class Transcription(Strict):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None
    languages: list[str] | None = None
    keywords: list[str] | None = None
    delay: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


class NoiseReduction(Strict):
    type: Literal["near_field", "far_field"] = "near_field"
    strength: Annotated[float, Field(ge=0.0, le=1.0)] | None = None


class VoiceId(Strict):
    id: str


Voice = Union[Annotated[str, Field(min_length=1, max_length=64)], VoiceId]

# ---- tools -----------------------------------------------------------------------------------


class FunctionTool(Strict):
    type: Literal["function"] = "function"
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class McpToolFilter(Strict):
    read_only: bool | None = None
    tool_names: list[str] | None = None


class McpApprovalFilter(Strict):
    always: McpToolFilter | None = None
    never: McpToolFilter | None = None


class McpTool(Strict):
    type: Literal["mcp"] = "mcp"
    server_label: Annotated[str, Field(min_length=1)]
    server_url: str | None = None
    connector_id: str | None = None
    tunnel_id: str | None = None
    authorization: str | None = None
    headers: dict[str, str] | None = None
    server_description: str | None = None
    allowed_tools: list[str] | McpToolFilter | None = None
    require_approval: Literal["always", "never"] | McpApprovalFilter | None = None
    allowed_callers: list[Literal["direct", "programmatic"]] | None = None
    defer_loading: bool | None = None


Tool = Annotated[Union[FunctionTool, McpTool], Field(discriminator="type")]


class ToolChoiceFunction(Strict):
    type: Literal["function"]
    name: str


class ToolChoiceMcp(Strict):
    type: Literal["mcp"]
    server_label: str
    name: str | None = None


ToolChoice = Union[
    Literal["none", "auto", "required"],
    Annotated[Union[ToolChoiceFunction, ToolChoiceMcp], Field(discriminator="type")],
]

# ---- other session fields --------------------------------------------------------------------


class TracingConfig(Strict):
    workflow_name: str | None = None
    group_id: str | None = None
    metadata: dict[str, Any] | None = None


Tracing = Union[Literal["auto"], TracingConfig]


class TokenLimits(Strict):
    post_instructions: Annotated[int, Field(ge=0)] | None = None


class RetentionRatio(Strict):
    type: Literal["retention_ratio"]
    retention_ratio: Annotated[float, Field(ge=0.0, le=1.0)]
    token_limits: TokenLimits | None = None


Truncation = Union[Literal["auto", "disabled"], RetentionRatio]


class Prompt(Strict):
    id: str
    version: str | None = None
    variables: dict[str, Any] | None = None


class Reasoning(Strict):
    effort: Literal["minimal", "low", "medium", "high", "xhigh"] | None = None


MaxTokens = Union[Annotated[int, Field(ge=1, le=4096)], Literal["inf"]]
Include = list[Literal["item.input_audio_transcription.logprobs"]]
Modalities = Annotated[list[Literal["text", "audio"]], Field(min_length=1, max_length=1)]

# ---- GA sessions -----------------------------------------------------------------------------


class AudioInput(Strict):
    format: AudioFormat = None  # type: ignore[assignment]
    transcription: Transcription | None = None
    noise_reduction: NoiseReduction | None = None
    turn_detection: TurnDetection | None = None


class AudioOutput(Strict):
    format: AudioFormat = None  # type: ignore[assignment]
    voice: Voice = None  # type: ignore[assignment]
    speed: Annotated[float, Field(ge=0.25, le=1.5)] = None  # type: ignore[assignment]


class AudioConfig(Strict):
    input: AudioInput = None  # type: ignore[assignment]
    output: AudioOutput = None  # type: ignore[assignment]


class RealtimeSessionUpdate(Strict):
    type: Literal["realtime"]
    model: str = None  # type: ignore[assignment]
    instructions: str = None  # type: ignore[assignment]
    output_modalities: Modalities = None  # type: ignore[assignment]
    audio: AudioConfig = None  # type: ignore[assignment]
    tools: list[Tool] = None  # type: ignore[assignment]
    tool_choice: ToolChoice = None  # type: ignore[assignment]
    max_output_tokens: MaxTokens = None  # type: ignore[assignment]
    tracing: Tracing | None = None
    truncation: Truncation = None  # type: ignore[assignment]
    prompt: Prompt | None = None
    include: Include | None = None
    reasoning: Reasoning = None  # type: ignore[assignment]
    parallel_tool_calls: bool = None  # type: ignore[assignment]


class TranscriptionAudioInput(Strict):
    format: AudioFormat = None  # type: ignore[assignment]
    transcription: Transcription | None = None
    noise_reduction: NoiseReduction | None = None
    turn_detection: TurnDetection | None = None


class TranscriptionAudio(Strict):
    input: TranscriptionAudioInput = None  # type: ignore[assignment]


class TranscriptionSessionUpdate(Strict):
    type: Literal["transcription"]
    audio: TranscriptionAudio | None = None
    include: Include | None = None


GASessionUpdate = Annotated[
    Union[RealtimeSessionUpdate, TranscriptionSessionUpdate], Field(discriminator="type")
]

# ---- beta sessions (flat) --------------------------------------------------------------------


class BetaServerVad(Strict):
    type: Literal["server_vad"] = "server_vad"
    threshold: Annotated[float, Field(ge=0.0, le=1.0)] = 0.5
    prefix_padding_ms: Annotated[int, Field(ge=0, le=10_000)] = 300
    silence_duration_ms: Annotated[int, Field(ge=0, le=10_000)] = 200
    idle_timeout_ms: Annotated[int, Field(ge=5000, le=30000)] | None = None
    create_response: bool = True
    interrupt_response: bool = True


BetaTurnDetection = Annotated[Union[BetaServerVad, SemanticVad], Field(discriminator="type")]


class BetaTranscription(Strict):
    model: str | None = None
    language: str | None = None
    prompt: str | None = None


class BetaFunctionTool(Strict):
    type: Literal["function"] = "function"
    name: Annotated[str, Field(min_length=1, max_length=64)]
    description: str | None = None
    parameters: dict[str, Any] | None = None


class BetaToolChoiceFunction(Strict):
    type: Literal["function"]
    name: str


class BetaClientSecret(Strict):
    expires_after: dict[str, Any] | None = None
    expires_at: dict[str, Any] | None = None


class BetaSessionUpdate(Strict):
    model: str | None = None
    modalities: Annotated[list[Literal["text", "audio"]], Field(min_length=1, max_length=2)] | None = None
    instructions: str | None = None
    voice: Voice | None = None
    input_audio_format: BetaAudioFormat | None = None
    output_audio_format: BetaAudioFormat | None = None
    input_audio_transcription: BetaTranscription | None = None
    input_audio_noise_reduction: NoiseReduction | None = None
    turn_detection: BetaTurnDetection | None = None
    tools: list[BetaFunctionTool] | None = None
    tool_choice: Union[Literal["none", "auto", "required"], BetaToolChoiceFunction] | None = None
    temperature: Annotated[float, Field(ge=0.6, le=1.2)] | None = None
    max_response_output_tokens: MaxTokens | None = None
    speed: Annotated[float, Field(ge=0.25, le=1.5)] | None = None
    tracing: Tracing | None = None
    include: Include | None = None
    prompt: Prompt | None = None
    truncation: Truncation | None = None
    client_secret: BetaClientSecret | None = None  # REST only; ignored on the socket


class BetaTranscriptionSessionUpdate(Strict):
    input_audio_format: BetaAudioFormat | None = None
    input_audio_transcription: BetaTranscription | None = None
    input_audio_noise_reduction: NoiseReduction | None = None
    turn_detection: BetaTurnDetection | None = None
    include: Include | None = None
    modalities: list[Literal["text", "audio"]] | None = None
    client_secret: BetaClientSecret | None = None
