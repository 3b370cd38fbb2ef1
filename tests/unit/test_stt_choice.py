"""Which speech-to-text engine is the default: the one `PARLEY_STT_ENGINE` names when it loads,
even when a remote STT server is configured too (that one stays available by name)."""

from __future__ import annotations

import pytest

from parley.engines.speech_registry import _stt
from parley.server.settings import Settings


@pytest.mark.parametrize("choice, default", [("auto", "openai"), ("pocketsphinx", "pocketsphinx"),
                                             ("openai", "openai")])
async def test_the_chosen_engine_is_the_default(choice: str, default: str) -> None:
    settings = Settings(stt_engine=choice, stt_base_url="http://127.0.0.1:9/v1")
    engines, status = await _stt(settings)
    try:
        assert engines["default"] is engines[default], status
        assert "openai" in engines  # the remote server is still there by name
        assert status.startswith(f"default {default};")
    finally:
        for engine in {id(e): e for e in engines.values()}.values():
            await engine.aclose()


async def test_a_chosen_engine_that_cannot_load_falls_back_to_one_that_did() -> None:
    # faster-whisper has no model here (no hub): pocketsphinx stands in, not the remote server
    settings = Settings(stt_engine="faster-whisper", stt_model="/nonexistent/model")
    engines, status = await _stt(settings)
    try:
        assert engines["default"] is engines["pocketsphinx"], status
    finally:
        for engine in {id(e): e for e in engines.values()}.values():
            await engine.aclose()
