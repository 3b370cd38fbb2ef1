"""Items and parameters as the client sends them, made into the plain data the session keeps.

`canonical_item` gives a created item (by `conversation.item.create` or in a response's
`input`) the shape the server echoes, and takes the audio it carried out of it; `plain` turns a
validated pydantic model (or a list of them) into plain dicts.
"""

from __future__ import annotations

import base64
import binascii
from typing import Any

from pydantic import BaseModel

from ..protocol import item_models as im
from ..protocol.errors import ProtocolError
from ..protocol.ids import IdFactory


def canonical_item(model: Any, param: str, ids: IdFactory) -> tuple[dict[str, Any], list[bytes]]:
    """A created item in the shape the server echoes, plus any audio it carried."""
    item = im.item_to_dict(model)
    item.setdefault("id", ids.new("item"))
    if item["type"] != "mcp_approval_response":  # that item has neither field in the GA schema
        item["object"] = "realtime.item"
        item["status"] = item.get("status") or "completed"
    audio: list[bytes] = []
    for i, part in enumerate(item.get("content", [])):
        if part.get("type") == "input_audio":
            raw = part.pop("audio", None)
            try:
                audio.append(base64.b64decode(raw, validate=True) if raw else b"")
            except (binascii.Error, ValueError):
                raise ProtocolError(f"Invalid '{param}.content[{i}].audio'. Expected base64-encoded audio bytes.",
                                    "invalid_value", f"{param}.content[{i}].audio") from None
            part.setdefault("transcript", None)
        elif part.get("type") == "output_audio":
            part.setdefault("transcript", "")
    if item["type"] == "function_call":
        item.setdefault("call_id", ids.new("call"))
    return item, audio


def plain(value: Any) -> Any:
    """A validated model (or list of them) as the plain data the session stores."""
    if isinstance(value, BaseModel):
        return value.model_dump(exclude_none=True)
    if isinstance(value, list):
        return [plain(v) for v in value]
    return value
