"""The playground page: talk to this server from a browser (WebRTC, microphone)."""

from __future__ import annotations

from fastapi import APIRouter

router = APIRouter()
