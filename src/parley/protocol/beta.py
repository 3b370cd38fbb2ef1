"""GA -> beta mapping of server events.  The core emits GA events; sessions that speak the
beta dialect get them renamed and reshaped here (realtime-protocol.md section 3.3)."""

from __future__ import annotations

from typing import Any

from .session_config import beta_format

_RENAMES = {
    "response.output_text.delta": "response.text.delta",
    "response.output_text.done": "response.text.done",
    "response.output_audio.delta": "response.audio.delta",
    "response.output_audio.done": "response.audio.done",
    "response.output_audio_transcript.delta": "response.audio_transcript.delta",
    "response.output_audio_transcript.done": "response.audio_transcript.done",
    "conversation.item.added": "conversation.item.created",
}

# GA-only events with no beta counterpart; beta clients never see them.
_DROPPED = {
    "conversation.item.done",
    "input_audio_buffer.timeout_triggered",
    "input_audio_buffer.dtmf_event_received",
    "conversation.item.input_audio_transcription.segment",
}

_PART_TYPES = {"output_text": "text", "output_audio": "audio"}


def item_to_beta(item: dict[str, Any]) -> dict[str, Any]:
    out = dict(item)
    if "content" in out:
        out["content"] = [{**p, "type": _PART_TYPES.get(p.get("type"), p.get("type"))} for p in out["content"]]
    return out


def response_to_beta(response: dict[str, Any], temperature: float) -> dict[str, Any]:
    output_fmt = (response.get("audio") or {}).get("output", {})
    modalities = ["text", "audio"] if response.get("output_modalities") == ["audio"] else ["text"]
    return {
        "id": response["id"],
        "object": "realtime.response",
        "status": response["status"],
        "status_details": response.get("status_details"),
        "output": [item_to_beta(i) for i in response.get("output", [])],
        "metadata": response.get("metadata"),
        "usage": usage_to_beta(response.get("usage")),
        "conversation_id": response.get("conversation_id"),
        "voice": output_fmt.get("voice", "alloy"),
        "modalities": modalities,
        "output_audio_format": beta_format(output_fmt.get("format")),
        "temperature": temperature,
        "max_output_tokens": response.get("max_output_tokens", "inf"),
    }


def usage_to_beta(usage: dict[str, Any] | None) -> dict[str, Any] | None:
    """Beta usage had neither image tokens nor the cached-token breakdown."""
    if usage is None:
        return None
    details = {k: v for k, v in usage["input_token_details"].items() if k in ("cached_tokens", "text_tokens", "audio_tokens")}
    return {**usage, "input_token_details": details}


def event_to_beta(event: dict[str, Any], temperature: float = 0.8) -> dict[str, Any] | None:
    """The beta form of a GA server event, or None when beta has no such event.
    (Session objects are converted by the core, which knows the beta-only temperature.)"""
    kind = event["type"]
    if kind in _DROPPED:
        return None
    out = dict(event)
    out["type"] = _RENAMES.get(kind, kind)
    if "item" in out and isinstance(out["item"], dict):
        out["item"] = item_to_beta(out["item"])
    if kind in ("response.created", "response.done"):
        out["response"] = response_to_beta(out["response"], temperature)
    elif kind == "response.function_call_arguments.done":
        out.pop("name", None)  # beta's event had no `name`
    return out
