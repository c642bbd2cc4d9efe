"""WebRTC helpers: codec preference and ICE server configuration for aiortc peer connections."""

from __future__ import annotations

from typing import Any

from aiortc import RTCIceServer, RTCRtpSender


def prefer_video_codec(transceiver: Any, codec: str) -> None:
    """Put ``codec`` (vp8 | h264) first in a video transceiver's preferences (the others stay as fallback).
    aiortc negotiates codecs in setRemoteDescription, so this must happen before it."""
    want = f"video/{codec}".upper()
    codecs = RTCRtpSender.getCapabilities("video").codecs
    preferred = [c for c in codecs if c.mimeType.upper() == want]
    if preferred:
        transceiver.setCodecPreferences(preferred + [c for c in codecs if c not in preferred])


def ice_servers(servers: list[Any]) -> list[RTCIceServer]:
    return [RTCIceServer(urls=s.urls, username=s.username or None, credential=s.credential or None)
            for s in servers]
