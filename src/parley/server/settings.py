"""Settings from `PARLEY_*` environment variables and an optional TOML file (`PARLEY_CONFIG`).

Environment variables win over the file.  List settings take comma-separated values
(`PARLEY_API_KEYS=key1,key2`).  Every setting is documented in the README.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, PydanticBaseSettingsSource, SettingsConfigDict, TomlConfigSettingsSource

KNOWN_MODELS = [
    "gpt-realtime", "gpt-realtime-2025-08-28", "gpt-realtime-mini", "gpt-realtime-mini-2025-10-06",
    "gpt-realtime-mini-2025-12-15", "gpt-realtime-1.5", "gpt-realtime-2", "gpt-realtime-2.1",
    "gpt-realtime-2.1-mini", "gpt-audio-1.5", "gpt-audio-mini", "gpt-audio-mini-2025-10-06",
    "gpt-audio-mini-2025-12-15", "gpt-4o-realtime-preview", "gpt-4o-realtime-preview-2024-10-01",
    "gpt-4o-realtime-preview-2024-12-17", "gpt-4o-realtime-preview-2025-06-03",
    "gpt-4o-mini-realtime-preview", "gpt-4o-mini-realtime-preview-2024-12-17", "parley",
]

CommaList = Annotated[list[str], NoDecode]


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="PARLEY_", extra="ignore")

    # network
    host: str = "127.0.0.1"
    port: int = 8000
    ssl_certfile: str | None = None
    ssl_keyfile: str | None = None

    # auth
    api_keys: CommaList = Field(default_factory=list)
    cors_origins: CommaList = Field(default_factory=lambda: ["*"])  # browser origins allowed to call the REST API
    max_body_bytes: int = 1024 * 1024  # REST request bodies
    # bodies of the routes that carry audio (transcriptions, translations, chat completions): 25 MiB,
    # the hosted API's upload limit
    max_audio_upload_bytes: int = 25 * 1024 * 1024

    # the language model
    llm_base_url: str | None = None
    llm_model: str | None = None  # remote: the model name to ask for; embedded: .gguf path or hub id
    llm_api_key: SecretStr | None = None
    llm_context_tokens: int = 8192
    llm_timeout_s: float = 60.0
    llm_max_retries: int = 2
    llm_threads: int | None = None

    # speech
    vad_model: str | None = None  # Silero ONNX file; default: the one in Parley's package data
    stt_engine: str = "auto"  # auto | faster-whisper | pocketsphinx | openai | none
    stt_model: str | None = None  # faster-whisper: CTranslate2 dir or hub id; remote: model name
    stt_base_url: str | None = None
    stt_api_key: SecretStr | None = None
    stt_timeout_s: float = 30.0
    stt_threads: int | None = None
    stt_workers: int = Field(default=1, ge=1)  # pocketsphinx decoder processes
    tts_engine: str = "auto"  # auto | kokoro | espeak | openai | none
    tts_model: str | None = None  # kokoro .onnx path or hub id; remote: model name
    tts_voices: str | None = None  # kokoro voices file
    tts_base_url: str | None = None
    tts_api_key: SecretStr | None = None
    tts_timeout_s: float = 30.0
    tts_voice_map: str | None = None  # "alloy=af_heart,ash=am_michael"

    # sessions
    models: CommaList = Field(default_factory=lambda: list(KNOWN_MODELS))
    default_model: str = "gpt-realtime"
    instructions: str | None = None
    voice: str = "alloy"
    session_max_minutes: float = 60
    max_event_bytes: int = 15 * 1024 * 1024  # larger client events get an event_too_large error
    # the WebSocket layer's own limit: a frame must be read whole to be answered with that error,
    # so this is well above max_event_bytes; beyond it the socket is closed with 1009
    max_frame_bytes: int = 40 * 1024 * 1024
    # permessage-deflate on WebSockets: base64 audio barely compresses (~25 %) and inflating
    # every append and deflating every audio delta costs CPU on the server (bench: ~5 % of a
    # busy server's time in zlib), so it is off unless asked for (e.g. for slow links)
    ws_compression: bool = False
    tokens_per_minute: int = 40_000  # per key; over it, responses fail with rate_limit_exceeded
    max_sessions_per_key: int = 100  # concurrent sessions per key (0: no limit)
    max_sessions: int = 0  # concurrent sessions in the process, all transports (0: no fixed cap)
    # refuse new sessions while the event loop is overloaded (runtime/load.py): its thread's CPU
    # share, or the p95 lag of a 50 ms probe, over the last window above these (0: that measure off),
    # until both are under the clear thresholds
    overload_cpu: float = 0.9
    overload_cpu_clear: float = 0.75
    overload_lag_ms: float = 50.0
    overload_lag_clear_ms: float = 20.0
    overload_window_s: float = Field(default=3.0, gt=0)
    outbox_max_bytes: int = 4 * 1024 * 1024  # unsent events per session before it waits
    slow_client_timeout_s: float = 10.0  # a client that reads nothing this long is closed (1013)

    # WebRTC calls (POST /v1/realtime/calls); see README "WebRTC and browsers"
    playground: bool = True  # serve the playground page at /playground
    ice_servers: CommaList = Field(default_factory=list)  # "stun:host:3478", "turn:user:pass@host:3478"
    ice_port_min: int | None = None  # UDP port range for media (open it in the firewall)
    ice_port_max: int | None = None
    ice_public_ip: str | None = None  # address to advertise when behind 1:1 NAT
    call_connect_timeout_s: float = 20.0  # a call whose media never connects is dropped

    # SIP calls (a trunk or PBX sends INVITEs); see README "Phone calls (SIP)"
    sip_port: int | None = None  # UDP and TCP; None: no SIP
    sip_host: str | None = None  # bind address; default: `host`
    sip_public_ip: str | None = None  # address to put in Contact and SDP when behind 1:1 NAT
    sip_allowed_networks: CommaList = Field(default_factory=list)  # CIDRs that may send SIP; empty: any
    sip_webhook_url: str | None = None  # realtime.call.incoming goes here; None: auto-accept
    sip_webhook_secret: SecretStr | None = None  # "whsec_..." (Standard Webhooks)
    sip_answer_timeout_s: float = 20.0  # a ringing call nobody accepts gets 480 after this long
    sip_rtp_port_min: int | None = None  # UDP ports for call audio (open them in the firewall)
    sip_rtp_port_max: int | None = None
    sip_rtp_timeout_s: float = 30.0  # a call whose caller sends no RTP for this long is hung up (BYE); 0: never

    # scale-out (README "Scaling out"): worker processes, and state shared in Redis
    workers: int = Field(default=0, ge=0)  # 0: one per core with redis_url, else 1
    redis_url: str | None = None  # redis://host:6379/0; unset: one process, state in memory
    cluster_secret: SecretStr | None = None  # shared by every node: authenticates forwarded requests
    advertise_host: str | None = None  # the address other nodes reach this one at; default: this host's IP
    internal_port: int = 8100  # worker i also listens on internal_port + i, for requests other nodes forward
    cluster_ttl_s: float = Field(default=15.0, gt=0)  # a node's leases and calls lapse this long after its last heartbeat
    cluster_heartbeat_s: float = Field(default=5.0, gt=0)

    shutdown_grace_s: float = 30.0  # on SIGTERM, live sessions get this long before a 1001 close

    # logging
    log_level: str = "info"
    log_json: bool = True
    debug_log_content: bool = False

    @field_validator("api_keys", "models", "cors_origins", "ice_servers", "sip_allowed_networks", mode="before")
    @classmethod
    def _split(cls, value: Any) -> Any:
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        return value

    @model_validator(mode="after")
    def _cluster_needs_a_secret(self) -> Settings:
        if self.redis_url and not self.cluster_secret:
            raise ValueError("PARLEY_REDIS_URL needs PARLEY_CLUSTER_SECRET (the same on every node): it authenticates "
                             "the requests nodes forward to each other")
        if self.cluster_heartbeat_s * 2 > self.cluster_ttl_s:
            raise ValueError("PARLEY_CLUSTER_TTL_S must be at least twice PARLEY_CLUSTER_HEARTBEAT_S")
        return self

    @property
    def worker_count(self) -> int:
        """`workers`, with 0 meaning one per core when Redis is shared, else one."""
        if self.workers:
            return self.workers
        return (os.cpu_count() or 1) if self.redis_url else 1

    @model_validator(mode="after")
    def _frames_hold_events(self) -> Settings:
        if self.max_frame_bytes < self.max_event_bytes:
            raise ValueError(f"max_frame_bytes ({self.max_frame_bytes}) must be at least max_event_bytes "
                             f"({self.max_event_bytes}): larger events must be read to be answered")
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        path = os.environ.get("PARLEY_CONFIG")
        if path:
            if not Path(path).is_file():
                raise ValueError(f"PARLEY_CONFIG points to {path!r}, which is not a file")
            sources.append(TomlConfigSettingsSource(settings_cls, toml_file=path))
        return tuple(sources)

    @property
    def is_loopback(self) -> bool:
        return self.host in ("127.0.0.1", "localhost", "::1") or self.host.startswith("127.")

    def check_exposure(self) -> None:
        """Refuse to listen beyond loopback without API keys."""
        if not self.is_loopback and not self.api_keys:
            raise SystemExit(
                f"Refusing to listen on {self.host}: no API keys are configured. "
                "Set PARLEY_API_KEYS (comma-separated) or listen on 127.0.0.1."
            )
