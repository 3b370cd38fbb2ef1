"""Webhooks signed the Standard Webhooks way, as OpenAI signs `realtime.call.incoming`.

Headers `webhook-id`, `webhook-timestamp` (Unix seconds) and `webhook-signature: v1,<base64>`
where the signature is HMAC-SHA256 over `"{id}.{timestamp}.{body}"` keyed with the secret
(`whsec_` + base64; a secret without the prefix is used as it is, as raw bytes).  The openai
SDK's `client.webhooks.unwrap()` verifies exactly this.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import secrets
from typing import Any

import httpx

log = logging.getLogger("parley.webhooks")

TIMEOUT_S = 10.0


def secret_bytes(secret: str) -> bytes:
    if secret.startswith("whsec_"):
        return base64.b64decode(secret[len("whsec_"):])
    return secret.encode()


def sign(secret: str, webhook_id: str, timestamp: int, body: bytes) -> str:
    mac = hmac.new(secret_bytes(secret), f"{webhook_id}.{timestamp}.".encode() + body, hashlib.sha256)
    return "v1," + base64.b64encode(mac.digest()).decode()


def signed_request(secret: str | None, body: dict[str, Any], now: int) -> tuple[bytes, dict[str, str]]:
    """The body as sent and its headers (signed when a secret is configured)."""
    data = json.dumps(body, separators=(",", ":")).encode()
    webhook_id = "wh_" + secrets.token_hex(12)
    headers = {"content-type": "application/json", "user-agent": "Parley-Webhooks",
               "webhook-id": webhook_id, "webhook-timestamp": str(now)}
    if secret:
        headers["webhook-signature"] = sign(secret, webhook_id, now, data)
    return data, headers


async def deliver(url: str, secret: str | None, body: dict[str, Any], now: int) -> bool:
    """POST the event once; True when the receiver answered 2xx."""
    data, headers = signed_request(secret, body, now)
    try:
        async with httpx.AsyncClient(timeout=TIMEOUT_S) as client:
            reply = await client.post(url, content=data, headers=headers)
    except httpx.HTTPError as exc:
        log.warning("webhook delivery failed", extra={"reason": type(exc).__name__})
        return False
    if not reply.is_success:
        log.warning("webhook receiver refused the event", extra={"status": reply.status_code})
    return reply.is_success
