"""The playground page and its assets are served (and only they), and can be switched off."""

from __future__ import annotations

from starlette.testclient import TestClient

from parley.server.app import create_app
from parley.server.settings import Settings


def client(**settings: object) -> TestClient:
    # No `with`: the lifespan (which loads the engines) is not needed to serve static files.
    return TestClient(create_app(Settings(**settings)))  # type: ignore[arg-type]


def test_page_has_the_ai_notice_and_the_dom_contract() -> None:
    r = client().get("/playground")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    assert 'id="ai-notice"' in html and "You are talking to an AI model, not a person" in html
    for element_id in ("api-key", "instructions", "voice", "turn-detection", "tool-enabled", "connect", "hangup",
                       "apply", "message", "send", "status", "transcript", "events", "remote-level", "remote-audio"):
        assert f'id="{element_id}"' in html, element_id
    assert 'src="/playground/playground.js"' in html and 'href="/playground/playground.css"' in html


def test_assets_have_their_content_types() -> None:
    c = client()
    js = c.get("/playground/playground.js")
    assert js.status_code == 200 and js.headers["content-type"].startswith("text/javascript")
    assert "oai-events" in js.text and "window.parley" in js.text
    css = c.get("/playground/playground.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    assert js.headers["x-content-type-options"] == "nosniff"


def test_only_known_assets_are_served() -> None:
    c = client()
    for path in ("/playground/playground.html", "/playground/nope.js", "/playground/..%2Fplayground.py",
                 "/playground/%2e%2e%2fapp.py", "/playground/../app.py"):
        assert c.get(path).status_code == 404, path


def test_root_redirects_to_the_playground() -> None:
    r = client().get("/", follow_redirects=False)
    assert r.status_code == 307 and r.headers["location"] == "/playground"


def test_playground_can_be_switched_off() -> None:
    c = client(playground=False)
    assert c.get("/playground").status_code == 404
    assert c.get("/playground/playground.js").status_code == 404
    assert c.get("/", follow_redirects=False).status_code == 404
