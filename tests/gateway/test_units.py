"""Gateway parts without a browser or stage services: the media clock, Opus pipeline delay, SDP checks,
host-candidate option, config, and join-token verification against Redis."""

from __future__ import annotations

import json
import time

import numpy as np
import pytest
import redis.asyncio as aioredis

from parley.v1 import renderer_pb2
from services.control import streams
from services.control.auth import join_secret, sign_join_token
from services.gateway.auth import ControlTokenVerifier, JoinRefused
from services.gateway.config import load_gateway_config
from services.gateway.media import MediaOut, opus_advance
from services.gateway.server import check_offer_sdp, configure_host_candidates


def frame(k: int, fps: int = 30, size: int = 16) -> renderer_pb2.RenderedFrame:
    data = np.full(size * size * 3 // 2, 128, np.uint8).tobytes()
    return renderer_pb2.RenderedFrame(data=data, width=size, height=size, pixel_format=renderer_pb2.PIXEL_FORMAT_I420,
                                      pts_us=round(k * 1e6 / fps), index=k)


async def test_media_clock_fills_silence_and_keeps_speech_on_the_video_clock():
    media = MediaOut(audio_rate=24_000, fps=30, max_queue_s=5.0, send_delay_s=0.0)
    for k in range(3):
        media.push_video(frame(k))
    speech = np.full(800, 1000, np.int16)  # frame 3's audio comes before its video, as from the renderer
    media.push_audio(100_000, speech.tobytes())
    media.push_video(frame(3))
    packets = list(media._audio)
    # 4 frames * 800 samples = 3200 samples = 6 packets of 480 (+ 320 waiting in the FIFO)
    assert [p for p, _ in packets] == [480 * i for i in range(6)]
    audio = np.concatenate([a for _, a in packets])
    assert not audio[:2400].any() and (audio[2400:] == 1000).all()
    # a new sender starts at the live edge: the last packets, stamped on the stream clock
    first = await media.next_audio()
    assert first.pts == 480 * 4 and first.sample_rate == 24_000 and first.time_base.denominator == 24_000
    video = await media.next_video()
    assert video.pts == 3 * 3000  # frame 3 at 90 kHz: the live edge
    assert video.time_base.denominator == 90_000 and video.width == 16


async def test_media_clock_restarts_after_a_long_gap_and_trims_stale_media():
    media = MediaOut(audio_rate=24_000, fps=30, max_queue_s=0.2, send_delay_s=0.0)
    for k in range(30):
        media.push_video(frame(k))
    assert len(media._video) <= 8 and media.video_frames_dropped > 0  # only ~0.2 s kept unsent
    media.push_video(frame(300))  # 9 s later: the audio clock jumps instead of filling 9 s of silence
    assert media._covered() == round((300 + 1) * 800)
    assert media.audio_packets_dropped > 0


def test_opus_pipeline_delay_is_measured():
    assert opus_advance(24_000) == pytest.approx(0.0265, abs=0.002)  # one packet held back + look-ahead
    assert opus_advance(48_000) == pytest.approx(0.0065, abs=0.002)  # look-ahead only


async def test_offer_checks_and_host_candidates():
    import aioice.ice
    from aiortc import RTCPeerConnection

    original = aioice.ice.get_host_addresses
    try:
        configure_host_candidates(["127.0.0.1", "::1"])
        assert aioice.ice.get_host_addresses(True, False) == ["127.0.0.1"]
        assert aioice.ice.get_host_addresses(True, True) == ["127.0.0.1", "::1"]
        pc = RTCPeerConnection()
        pc.addTransceiver("audio")
        pc.addTransceiver("video", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        sdp = pc.localDescription.sdp
        await pc.close()
    finally:
        aioice.ice.get_host_addresses = original
    assert "127.0.0.1" in sdp
    check_offer_sdp(sdp)
    for bad, reason in [("hello", "v=0"), ("v=0\r\n", "no media"), (sdp.replace("m=audio", "m=text"), "audio"),
                        (sdp.replace("a=fingerprint", "a=x-fingerprint"), "fingerprint"),
                        ("v=0\r\n" + "a=x\r\n" * 20000, "larger")]:
        with pytest.raises(ValueError, match=reason):
            check_offer_sdp(bad)


def test_config_from_environment():
    config = load_gateway_config(environ={
        "PARLEY_COMMON__SERVER__REDIS_URL": "redis://db:6379/2",
        "PARLEY_GATEWAY__WEBRTC__ICE_SERVERS": "[{urls: stun:stun.example.com:3478}, "
                                               "{urls: [turn:t.example.com], username: u, credential: p}]",
        "PARLEY_GATEWAY__WEBRTC__HOST_CANDIDATES": "[10.0.0.5]",
        "PARLEY_GATEWAY__RENDERER__ADDRESS": "renderer:50055",
    })
    assert config.server.redis_url == config.orchestrator.redis_url == "redis://db:6379/2"
    assert config.server.port == 50065 and config.http.port == 8080
    assert config.webrtc.ice_servers[0].urls == ["stun:stun.example.com:3478"]
    assert config.webrtc.ice_servers[1].username == "u" and config.webrtc.host_candidates == ["10.0.0.5"]
    assert config.renderer.address == "renderer:50055" and not config.renderer.allow_test_pattern


async def test_join_tokens_are_checked_against_the_control_plane(redis_url):
    client = aioredis.from_url(redis_url, decode_responses=True)
    prefix = f"gwu{int(time.time() * 1000)}:"
    try:
        secret = await join_secret(client, prefix)
        spec = {"system_prompt": "Be brief.", "context": "Likes tea.", "greeting": "Hi!", "replica_id": "r_1"}
        await client.hset(streams.conversation_key("c_live", prefix), mapping={"status": "waiting",
                                                                               "spec": json.dumps(spec)})
        await client.hset(streams.conversation_key("c_done", prefix), mapping={"status": "ended",
                                                                               "end_reason": "max_duration"})
        verifier = ControlTokenVerifier(client, prefix)
        info = await verifier.verify(sign_join_token(secret, "c_live", time.time() + 60), "c_live")
        assert (info.system_prompt, info.context, info.greeting, info.replica_id) == (
            "Be brief.", "Likes tea.", "Hi!", "r_1")
        cases = [
            ("", "c_live", 401, "missing_token"),
            ("x.y", "c_live", 401, "invalid_token"),
            (sign_join_token("other secret", "c_live", time.time() + 60), "c_live", 401, "invalid_token"),
            (sign_join_token(secret, "c_live", time.time() - 1), "c_live", 401, "token_expired"),
            (sign_join_token(secret, "c_other", time.time() + 60), "c_live", 403, "foreign_token"),
            (sign_join_token(secret, "c_done", time.time() + 60), "c_done", 410, "conversation_ended"),
            (sign_join_token(secret, "c_gone", time.time() + 60), "c_gone", 404, "unknown_conversation"),
        ]
        for token, conversation_id, status, code in cases:
            with pytest.raises(JoinRefused) as refused:
                await verifier.verify(token, conversation_id)
            assert (refused.value.status, refused.value.code) == (status, code), conversation_id
            assert refused.value.message
    finally:
        await client.aclose()


@pytest.mark.parametrize("codec", ["vp8", "h264"])
async def test_preferred_video_codec_is_negotiated(codec):
    from aiortc import RTCPeerConnection

    from services.gateway.rtc import prefer_video_codec

    browser, gateway = RTCPeerConnection(), RTCPeerConnection()
    try:
        browser.addTransceiver("audio")
        browser.addTransceiver("video", direction="recvonly")
        await browser.setLocalDescription(await browser.createOffer())
        prefer_video_codec(gateway.addTransceiver("video", direction="sendrecv"), codec)
        await gateway.setRemoteDescription(browser.localDescription)
        await gateway.setLocalDescription(await gateway.createAnswer())
        video = gateway.localDescription.sdp.split("m=video", 1)[1]
        first = video.split("a=rtpmap:", 1)[1].split()[1]
        assert first.lower().startswith(codec), video[:300]
        assert "a=sendonly" in video
    finally:
        await browser.close()
        await gateway.close()
