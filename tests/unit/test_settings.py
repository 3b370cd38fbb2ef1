"""Settings: environment variables, a TOML file, and the loopback rule."""

from __future__ import annotations

import os

import pytest

from parley.cluster.local import LocalShared
from parley.server.auth import Keys
from parley.server.settings import Settings


def test_toml_file_with_environment_winning(tmp_path, monkeypatch) -> None:
    config = tmp_path / "parley.toml"
    config.write_text('port = 9100\nvoice = "ash"\napi_keys = ["from-file"]\nllm_base_url = "http://127.0.0.1:1/v1"\n')
    monkeypatch.setenv("PARLEY_CONFIG", str(config))
    monkeypatch.setenv("PARLEY_VOICE", "marin")
    s = Settings()
    assert s.port == 9100 and s.api_keys == ["from-file"] and s.llm_base_url == "http://127.0.0.1:1/v1"
    assert s.voice == "marin"  # the environment wins over the file


def test_comma_separated_lists(monkeypatch) -> None:
    monkeypatch.setenv("PARLEY_API_KEYS", " a , b,")
    monkeypatch.setenv("PARLEY_MODELS", "m1,m2")
    s = Settings()
    assert s.api_keys == ["a", "b"] and s.models == ["m1", "m2"]


def test_missing_config_file_is_an_error(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("PARLEY_CONFIG", str(tmp_path / "nope.toml"))
    with pytest.raises(ValueError, match="PARLEY_CONFIG"):
        Settings()


def test_refuses_public_bind_without_keys() -> None:
    with pytest.raises(SystemExit, match="PARLEY_API_KEYS"):
        Settings(host="0.0.0.0", api_keys=[]).check_exposure()
    Settings(host="0.0.0.0", api_keys=["k"]).check_exposure()
    Settings(host="127.0.0.1", api_keys=[]).check_exposure()


async def test_key_checks() -> None:
    keys = Keys(["k1", "k2"], LocalShared())
    assert keys.check_api_key("k2") and not keys.check_api_key("k3") and not keys.check_api_key(None)
    assert await keys.authenticate("k1", now=0) is not None and await keys.authenticate("bad", now=0) is None
    value, expires_at = await keys.mint(now=100.0, ttl_s=10, bound=None, kind="realtime")
    assert expires_at == 110
    assert await keys.authenticate(value, now=105.0) is not None
    assert await keys.authenticate(value, now=110.0) is None  # expired
    assert "k1" not in repr(await keys.authenticate("k1", now=0))
    other, _ = await keys.mint(now=100.0, ttl_s=10, bound=None, kind="realtime")
    assert await keys.revoke(other) and await keys.authenticate(other, now=101.0) is None
    assert not await keys.revoke(other) and not await keys.revoke("k1")


def test_redis_needs_a_cluster_secret() -> None:
    with pytest.raises(ValueError, match="PARLEY_CLUSTER_SECRET"):
        Settings(redis_url="redis://127.0.0.1:6379/0")
    settings = Settings(redis_url="redis://127.0.0.1:6379/0", cluster_secret="s")
    assert settings.worker_count == (os.cpu_count() or 1)
    assert Settings().worker_count == 1 and Settings(workers=3).worker_count == 3


def test_frames_must_hold_events() -> None:
    with pytest.raises(ValueError, match="max_frame_bytes"):
        Settings(max_event_bytes=2000, max_frame_bytes=1000)
