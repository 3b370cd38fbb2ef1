"""Model-hub helpers shared by the engines that can fetch weights (llama.cpp, faster-whisper,
Kokoro)."""

from __future__ import annotations

import os


def hub_offline() -> bool:
    """True when the hub must not be contacted: `HF_HUB_OFFLINE` in the environment now (read on
    every call, so it works when set after huggingface_hub was imported), or as huggingface_hub
    read it at import."""
    if os.environ.get("HF_HUB_OFFLINE", "").strip().upper() in {"1", "ON", "YES", "TRUE"}:
        return True
    try:
        from huggingface_hub import constants

        return bool(getattr(constants, "HF_HUB_OFFLINE", False))
    except Exception:  # pragma: no cover - huggingface_hub missing or changed
        return False
