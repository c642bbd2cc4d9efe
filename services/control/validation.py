"""Request validation: every rule answers INVALID_ARGUMENT with a message naming the field."""

from __future__ import annotations

import asyncio
import ipaddress
import json
import math
import re
import socket
import time
import urllib.parse
from typing import Any

from parley.errors import InvalidInput
from parley.v1 import control_pb2 as pb
from services.control.config import ControlServiceConfig, Limits

ID_PATTERNS = {
    "persona": re.compile(r"p_[0-9a-f]{20}"),
    "replica": re.compile(r"r_[0-9a-f]{20}"),
    "conversation": re.compile(r"c_[0-9a-f]{20}"),
    "job": re.compile(r"j_[0-9a-f]{20}"),
    "delivery": re.compile(r"d_[0-9a-f]{20}"),
}
ID_PREFIX = {"persona": "p_", "replica": "r_", "conversation": "c_", "job": "j_", "delivery": "d_"}

# The renderer's vocabulary (services.renderer.driving.emotion.Emotion), plus common synonyms.
EMOTIONS = ("neutral", "joy", "sorrow", "anger", "surprise")
EMOTION_ALIASES = {"happy": "joy", "sad": "sorrow", "angry": "anger", "surprised": "surprise"}
LLM_BACKENDS = ("", "llamacpp", "openai")
TOOL_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_-]{0,63}")
LANGUAGE = re.compile(r"[A-Za-z]{2,3}(-[A-Za-z0-9]{2,8})*")
SAMPLE_RATES = (8000, 48000)


def check_id(kind: str, value: str, field: str | None = None, required: bool = True) -> str:
    """``value`` if it is a well-formed id of ``kind`` (or empty and not required)."""
    field = field or f"{kind}_id"
    if not value:
        if required:
            raise InvalidInput(f"{field} is required")
        return ""
    if not ID_PATTERNS[kind].fullmatch(value):
        raise InvalidInput(f"{field} {_short(value)} is not a {kind} id (expected '{ID_PREFIX[kind]}' + 20 hex digits)")
    return value


def _short(value: str, n: int = 40) -> str:
    return repr(value if len(value) <= n else value[:n] + "...")


def check_text(field: str, value: str, limit: int, required: bool = False) -> str:
    if required and not value.strip():
        raise InvalidInput(f"{field} is required")
    if len(value) > limit:
        raise InvalidInput(f"{field} is too long: {len(value)} characters (at most {limit})")
    if "\x00" in value:
        raise InvalidInput(f"{field} must not contain NUL characters")
    return value


def check_duration(field: str, value: float, default: float, maximum: float) -> float:
    """Seconds: 0 = ``default``; negative, non-finite or above ``maximum`` is invalid."""
    if not math.isfinite(value):
        raise InvalidInput(f"{field} must be a finite number of seconds")
    if value < 0:
        raise InvalidInput(f"{field} must not be negative (got {value:g}); 0 means the default ({default:g} s)")
    if value > maximum:
        raise InvalidInput(f"{field} is too long: {value:g} s (at most {maximum:g} s)")
    return float(value) if value > 0 else float(default)


def page_size(value: int, default: int, maximum: int, field: str = "page_size") -> int:
    if value < 0:
        raise InvalidInput(f"{field} must not be negative")
    return min(value or default, maximum)


# -- URLs ----------------------------------------------------------------------------------------------
def parse_http_url(field: str, url: str, limits: Limits) -> urllib.parse.SplitResult:
    if len(url) > limits.max_url_chars:
        raise InvalidInput(f"{field} is too long: {len(url)} characters (at most {limits.max_url_chars})")
    if any(c.isspace() or ord(c) < 0x20 or ord(c) == 0x7F for c in url):
        raise InvalidInput(f"{field} must not contain spaces or control characters")
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:
        raise InvalidInput(f"{field} {_short(url)} is not a valid URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise InvalidInput(f"{field} {_short(url)} must be an http:// or https:// URL")
    if not parts.hostname:
        raise InvalidInput(f"{field} {_short(url)} has no host")
    if parts.username or parts.password:
        raise InvalidInput(f"{field} must not carry credentials")
    if port == 0:
        raise InvalidInput(f"{field} has port 0")
    return parts


def is_public_address(address: str) -> bool:
    """False for loopback, link-local, private, shared, reserved, multicast and unspecified addresses."""
    ip = ipaddress.ip_address(address.split("%", 1)[0])
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    if isinstance(ip, ipaddress.IPv6Address) and ip.sixtofour is not None:
        ip = ip.sixtofour
    return not (ip.is_loopback or ip.is_link_local or ip.is_private or ip.is_reserved or ip.is_multicast
                or ip.is_unspecified or not ip.is_global)


_resolve_cache: dict[tuple[str, int], tuple[list[str], float]] = {}


async def resolve(host: str, port: int, timeout_s: float) -> list[str]:
    """Addresses of ``host`` (cached for 30 s); InvalidInput if it does not resolve in time."""
    try:
        return [str(ipaddress.ip_address(host.strip("[]")))]
    except ValueError:
        pass
    now = time.monotonic()
    hit = _resolve_cache.get((host, port))
    if hit and hit[1] > now:
        return hit[0]
    loop = asyncio.get_running_loop()
    try:
        infos = await asyncio.wait_for(loop.getaddrinfo(host, port, type=socket.SOCK_STREAM), timeout_s)
    except (TimeoutError, OSError, UnicodeError) as exc:
        raise InvalidInput(f"callback host {_short(host)} does not resolve ({type(exc).__name__})") from None
    addresses = sorted({info[4][0] for info in infos})
    if len(_resolve_cache) > 1000:
        _resolve_cache.clear()
    _resolve_cache[(host, port)] = (addresses, now + 30.0)
    return addresses


async def check_callback_url(url: str, config: ControlServiceConfig, field: str = "callback_url") -> str:
    """A webhook target: http(s), resolvable, and (unless allowed) only on public addresses."""
    if not url:
        return ""
    parts = parse_http_url(field, url, config.limits)
    await check_callback_target(parts, config, field)
    return url


async def check_callback_target(parts: urllib.parse.SplitResult, config: ControlServiceConfig,
                                field: str = "callback_url") -> list[str]:
    port = parts.port or (443 if parts.scheme == "https" else 80)
    addresses = await resolve(parts.hostname or "", port, config.webhooks.resolve_timeout_s)
    if not config.webhooks.allow_private_callbacks:
        private = [a for a in addresses if not is_public_address(a)]
        if private:
            raise InvalidInput(
                f"{field} host {_short(parts.hostname or '')} resolves to a private, loopback or link-local "
                f"address ({private[0]}); refused unless the operator sets webhooks.allow_private_callbacks"
            )
    return addresses


# -- personas --------------------------------------------------------------------------------------------
def check_persona_fields(persona: pb.Persona, limits: Limits) -> None:
    """Every field of a (merged) persona; referenced replica checked by the caller."""
    check_text("persona.name", persona.name, limits.max_name_chars, required=True)
    check_text("persona.system_prompt", persona.system_prompt, limits.max_prompt_chars)
    check_text("persona.context", persona.context, limits.max_context_chars)
    check_text("persona.greeting", persona.greeting, limits.max_greeting_chars)
    check_id("replica", persona.default_replica_id, "persona.default_replica_id", required=False)
    layers = persona.layers
    llm = layers.llm
    if llm.backend not in LLM_BACKENDS:
        raise InvalidInput(
            f"persona.layers.llm.backend {_short(llm.backend)} must be one of: llamacpp, openai (or empty)")
    if llm.base_url:
        parse_http_url("persona.layers.llm.base_url", llm.base_url, limits)
    check_text("persona.layers.llm.model", llm.model, 256)
    check_text("persona.layers.llm.api_key", llm.api_key, 1024)
    sampling = llm.sampling
    temperature = sampling.temperature
    if sampling.HasField("temperature") and not (math.isfinite(temperature) and 0 <= temperature <= 2):
        raise InvalidInput("persona.layers.llm.sampling.temperature must be within 0..2")
    if sampling.HasField("top_p") and not (math.isfinite(sampling.top_p) and 0 < sampling.top_p <= 1):
        raise InvalidInput("persona.layers.llm.sampling.top_p must be within (0, 1]")
    if sampling.HasField("max_tokens") and not 1 <= sampling.max_tokens <= 4096:
        raise InvalidInput("persona.layers.llm.sampling.max_tokens must be within 1..4096")
    if len(llm.tools) > limits.max_tools:
        raise InvalidInput(f"persona.layers.llm.tools: at most {limits.max_tools} tools")
    names: set[str] = set()
    for i, tool in enumerate(llm.tools):
        where = f"persona.layers.llm.tools[{i}]"
        if not TOOL_NAME.fullmatch(tool.name):
            raise InvalidInput(f"{where}.name {_short(tool.name)} must match [A-Za-z_][A-Za-z0-9_-]{{0,63}}")
        if tool.name in names:
            raise InvalidInput(f"{where}.name {tool.name!r} is used twice")
        names.add(tool.name)
        check_text(f"{where}.description", tool.description, 2000)
        check_text(f"{where}.parameters_json", tool.parameters_json, limits.max_tool_json_chars)
        if tool.parameters_json:
            try:
                schema = json.loads(tool.parameters_json)
            except ValueError as exc:
                raise InvalidInput(f"{where}.parameters_json is not valid JSON: {exc}") from None
            if not isinstance(schema, dict):
                raise InvalidInput(f"{where}.parameters_json must be a JSON object (a JSON Schema)")
    tts = layers.tts
    check_text("persona.layers.tts.voice", tts.voice, 128)
    if not math.isfinite(tts.speed) or (tts.speed != 0 and not 0.5 <= tts.speed <= 2.0):
        raise InvalidInput("persona.layers.tts.speed must be 0 (default) or within 0.5..2.0")
    check_text("persona.layers.asr.model", layers.asr.model, 256)
    if layers.asr.language and not LANGUAGE.fullmatch(layers.asr.language):
        raise InvalidInput(
            f"persona.layers.asr.language {_short(layers.asr.language)} is not a language code like 'en'")
    for name in ("patience", "interruptibility"):
        value = getattr(layers.turn_taking, name)
        if value not in pb.Level.values():
            raise InvalidInput(f"persona.layers.turn_taking.{name} is not a known level ({value})")


# -- interactions ------------------------------------------------------------------------------------------
def interaction_payload(request: pb.InteractRequest, limits: Limits) -> tuple[str, dict[str, Any]]:
    """``(type, data)`` to publish for a validated interaction."""
    import base64

    kind = request.WhichOneof("action")
    if kind is None:
        raise InvalidInput("action is required: one of echo, respond, interrupt, overwrite_context, "
                           "append_context, set_emotion")
    if kind == "echo":
        echo = request.echo
        has_audio = echo.HasField("audio") and len(echo.audio.data) > 0
        if bool(echo.text.strip()) == has_audio:
            raise InvalidInput("echo needs exactly one of text or audio")
        if not has_audio:
            return kind, {"text": check_text("echo.text", echo.text, limits.max_text_chars)}
        audio = echo.audio
        if len(audio.data) > limits.max_echo_audio_bytes:
            raise InvalidInput(
                f"echo.audio is too large: {len(audio.data)} bytes (at most {limits.max_echo_audio_bytes})")
        if not SAMPLE_RATES[0] <= audio.sample_rate <= SAMPLE_RATES[1]:
            raise InvalidInput(f"echo.audio.sample_rate must be within {SAMPLE_RATES[0]}..{SAMPLE_RATES[1]} Hz")
        if audio.channels not in (0, 1):
            raise InvalidInput("echo.audio must be mono (channels 0 or 1)")
        encoding = {0: "pcm_s16le", 1: "pcm_s16le", 2: "pcm_f32le"}.get(audio.encoding)
        if encoding is None:
            raise InvalidInput("echo.audio.encoding is not a known encoding")
        width = 4 if encoding == "pcm_f32le" else 2
        if len(audio.data) % width:
            raise InvalidInput(f"echo.audio.data length must be a multiple of {width} bytes for {encoding}")
        return kind, {"audio_b64": base64.b64encode(audio.data).decode(), "sample_rate": audio.sample_rate,
                      "encoding": encoding}
    if kind == "respond":
        return kind, {"text": check_text("respond.text", request.respond.text, limits.max_text_chars, required=True)}
    if kind == "interrupt":
        return kind, {}
    if kind in ("overwrite_context", "append_context"):
        message = getattr(request, kind)
        required = kind == "append_context"
        return kind, {"context": check_text(f"{kind}.context", message.context, limits.max_context_chars, required)}
    if kind == "set_emotion":
        emotion = request.set_emotion.emotion.strip().lower()
        emotion = EMOTION_ALIASES.get(emotion, emotion)
        if emotion not in EMOTIONS:
            raise InvalidInput(f"set_emotion.emotion {_short(request.set_emotion.emotion)} is not one of: "
                               + ", ".join(EMOTIONS) + " (or happy, sad, angry, surprised)")
        intensity = request.set_emotion.intensity
        if not math.isfinite(intensity) or not 0 <= intensity <= 1:
            raise InvalidInput("set_emotion.intensity must be within 0..1 (0 means 1)")
        return kind, {"emotion": emotion, "intensity": float(intensity) or 1.0}
    raise InvalidInput(f"unknown action {kind}")
