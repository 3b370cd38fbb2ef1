"""Settings: environment variables, a TOML file, and the loopback rule."""

from __future__ import annotations

import pytest

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


def test_key_checks() -> None:
    keys = Keys(["k1", "k2"])
    assert keys.check_api_key("k2") and not keys.check_api_key("k3") and not keys.check_api_key(None)
    assert keys.authenticate("k1", now=0) is not None and keys.authenticate("bad", now=0) is None
    value, expires_at = keys.mint(now=100.0, ttl_s=10, bound=None, kind="realtime")
    assert keys.authenticate(value, now=105.0) is not None
    assert keys.authenticate(value, now=110.0) is None  # expired
    assert "k1" not in repr(keys.authenticate("k1", now=0))
