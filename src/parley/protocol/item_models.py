"""Strict models of the conversation items a client may create (GA and beta), and their
conversion to the canonical GA dict the core stores."""

from __future__ import annotations

from typing import Annotated, Any, Literal, Union

from pydantic import Field, model_validator

from .strict import Strict

ItemId = Annotated[str, Field(min_length=1, max_length=32)]
Status = Literal["completed", "incomplete", "in_progress"]

# ---- GA content parts ------------------------------------------------------------------------


class InputText(Strict):
    type: Literal["input_text"]
    text: str


class InputAudio(Strict):
    type: Literal["input_audio"]
    audio: str | None = None
    transcript: str | None = None


class InputImage(Strict):
    type: Literal["input_image"]
    image_url: str
    detail: Literal["auto", "low", "high"] | None = None


class OutputText(Strict):
    type: Literal["output_text"]
    text: str


class OutputAudio(Strict):
    type: Literal["output_audio"]
    audio: str | None = None
    transcript: str | None = None


ContentPart = Annotated[
    Union[InputText, InputAudio, InputImage, OutputText, OutputAudio], Field(discriminator="type")
]

_ALLOWED_PARTS = {
    "system": {"input_text"},
    "user": {"input_text", "input_audio", "input_image"},
    "assistant": {"output_text", "output_audio"},
}


class MessageItem(Strict):
    type: Literal["message"]
    role: Literal["system", "user", "assistant"]
    content: list[ContentPart]
    id: ItemId | None = None
    object: Literal["realtime.item"] | None = None
    status: Status | None = None

    @model_validator(mode="after")
    def _parts_fit_role(self) -> MessageItem:
        allowed = _ALLOWED_PARTS[self.role]
        for part in self.content:
            if part.type not in allowed:
                raise ValueError(
                    f"content type '{part.type}' is not allowed in a {self.role} message; "
                    f"expected one of {sorted(allowed)}"
                )
            if part.type == "output_audio" and part.audio:
                raise ValueError("assistant audio content cannot be created by the client")
        return self


class FunctionCallItem(Strict):
    type: Literal["function_call"]
    name: str
    arguments: str
    call_id: str | None = None
    id: ItemId | None = None
    object: Literal["realtime.item"] | None = None
    status: Status | None = None


class FunctionCallOutputItem(Strict):
    type: Literal["function_call_output"]
    call_id: str
    output: str
    id: ItemId | None = None
    object: Literal["realtime.item"] | None = None
    status: Status | None = None


class McpApprovalResponseItem(Strict):
    type: Literal["mcp_approval_response"]
    id: ItemId
    approval_request_id: str
    approve: bool
    reason: str | None = None


class ItemReference(Strict):
    type: Literal["item_reference"]
    id: str


GAItem = Annotated[
    Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, McpApprovalResponseItem],
    Field(discriminator="type"),
]
GAInputItem = Annotated[
    Union[MessageItem, FunctionCallItem, FunctionCallOutputItem, McpApprovalResponseItem, ItemReference],
    Field(discriminator="type"),
]

# ---- beta items (flat) -----------------------------------------------------------------------


class BetaContent(Strict):
    type: Literal["input_text", "input_audio", "item_reference", "text", "audio"]
    text: str | None = None
    audio: str | None = None
    transcript: str | None = None
    id: str | None = None


class BetaItem(Strict):
    type: Literal["message", "function_call", "function_call_output", "item_reference"] | None = None
    id: ItemId | None = None
    object: Literal["realtime.item"] | None = None
    status: Status | None = None
    role: Literal["system", "user", "assistant"] | None = None
    content: list[BetaContent] | None = None
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | None = None


_BETA_TO_GA_PART = {"text": "output_text", "audio": "output_audio"}


def item_to_dict(item: Any) -> dict[str, Any]:
    """A validated GA item model as a plain dict, without unset optional fields."""
    return item.model_dump(exclude_none=True)


def beta_item_to_ga(item: BetaItem) -> dict[str, Any]:
    """Map a flat beta item onto the GA item shape (the core only knows GA)."""
    raw = item.model_dump(exclude_none=True)
    kind = raw.get("type") or ("item_reference" if raw.get("id") and not raw.get("role") else "message")
    raw["type"] = kind
    if kind == "message":
        parts = []
        for part in raw.get("content", []):
            t = _BETA_TO_GA_PART.get(part["type"], part["type"])
            parts.append({**part, "type": t})
        raw["content"] = parts
    return raw
