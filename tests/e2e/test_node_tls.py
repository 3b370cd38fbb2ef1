"""The `openai` Node SDK's GA Realtime client (`OpenAIRealtimeWS` from `openai/realtime/ws`) against a real
Parley process over TLS.

That client always connects with wss:// (docs/clients.md section 4a), so Parley is started with a
self-signed certificate for 127.0.0.1/localhost and Node trusts it through NODE_EXTRA_CA_CERTS, i.e. the
certificate is really verified. The Node dependencies are pinned in tests/node/package-lock.json and
installed once with `npm ci` when tests/node/node_modules is missing; without `node`/`npm` the test is skipped.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.support.node import NODE_DIR, node_with
from tests.support.parley_server import ParleyServer
from tests.support.scripted_llm import ScriptedLLMServer, Text

SCRIPT = NODE_DIR / "realtime_text_turn.mjs"


def _make_cert(directory: Path) -> tuple[Path, Path]:
    """A self-signed certificate (also its own CA) for 127.0.0.1 and localhost: (cert.pem, key.pem)."""
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    try:
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes, serialization
        from cryptography.hazmat.primitives.asymmetric import ec
        from cryptography.x509.oid import NameOID
    except ImportError:
        subprocess.run(
            ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
             "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key_path), "-out", str(cert_path),
             "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
             "-addext", "basicConstraints=critical,CA:TRUE"],
            check=True, capture_output=True,
        )
        return cert_path, key_path

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=2))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address("127.0.0.1")), x509.DNSName("localhost")]), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path, key_path


@pytest.fixture(scope="module")
def node() -> str:
    """The `node` binary, with tests/node's pinned dependencies installed."""
    # openai 7.x declares node >=22; it is exercised here on Node 20, older ones are untested
    return node_with(("openai",), "for the Node SDK test")[0]


@pytest.fixture(scope="module")
def tls_parley(scripted_llm: ScriptedLLMServer, tmp_path_factory: pytest.TempPathFactory,
               ) -> Iterator[tuple[ParleyServer, Path]]:
    """Parley serving https/wss with a fresh self-signed certificate: (server, cert.pem)."""
    cert, key = _make_cert(tmp_path_factory.mktemp("tls"))
    env = {"PARLEY_LLM_BASE_URL": scripted_llm.base_url, "PARLEY_LLM_MODEL": scripted_llm.model}
    with ParleyServer(env, name="e2e-node-tls", scheme="https",
                      args=["--ssl-certfile", str(cert), "--ssl-keyfile", str(key)]) as server:
        yield server, cert


def _run_node(node: str, server: ParleyServer, cert: Path, expected: str) -> dict[str, Any]:
    env = {**os.environ, "NODE_EXTRA_CA_CERTS": str(cert), "PROMPT": "ping"}
    for name in ("OPENAI_BASE_URL", "OPENAI_API_KEY", "EXPECTED_TEXT", "NODE_OPTIONS"):
        env.pop(name, None)
    done = subprocess.run([node, str(SCRIPT), server.base_url, server.api_key or "", expected],
                          cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=30)
    lines = done.stdout.strip().splitlines()
    assert lines, f"no output from node (exit {done.returncode}): {done.stderr[-2000:]}\n{server.log()[-2000:]}"
    result = json.loads(lines[-1])
    assert done.returncode == 0, (
        f"node exited {done.returncode}: {result}\n{done.stderr[-2000:]}\n{server.log()[-2000:]}")
    return result


def test_openai_node_ga_ws_text_turn_over_tls(node: str, tls_parley: tuple[ParleyServer, Path],
                                              llm: ScriptedLLMServer) -> None:
    server, cert = tls_parley
    reply = "Pong from Parley over TLS."
    llm.enqueue(Text(reply))

    result = _run_node(node, server, cert, reply)

    assert result["text"] == reply
    assert result["status"] == "completed"
    seen = result["events"]
    for event_type in ("session.created", "response.created", "response.output_text.delta", "response.done"):
        assert event_type in seen, f"{event_type} missing from {seen}"
    assert seen[0] == "session.created"
    assert seen.index("response.created") < seen.index("response.output_text.delta") < seen.index("response.done")
    assert "error" not in seen
    assert llm.requests[-1]["messages"][-1]["content"] in ("ping", [{"type": "text", "text": "ping"}])
