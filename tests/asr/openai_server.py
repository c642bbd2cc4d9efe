"""A small OpenAI-compatible ``POST /v1/audio/transcriptions`` server over any AsrBackend (tests).

Speaks the multipart request and the ``json`` / ``verbose_json`` answers of the OpenAI API, with
``timestamp_granularities[]=word`` honoured, so the remote backend is tested against real HTTP.
"""

from __future__ import annotations

import io
import json
import threading
import wave
from email.parser import BytesParser
from email.policy import HTTP
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import numpy as np

from parley.audio import resample
from services.asr.backends.base import SAMPLE_RATE, AsrBackend


def parse_multipart(content_type: str, body: bytes) -> tuple[dict[str, list[str]], dict[str, bytes]]:
    """Form fields (name -> values) and files (name -> bytes) of a multipart/form-data body."""
    message = BytesParser(policy=HTTP).parsebytes(f"Content-Type: {content_type}\r\n\r\n".encode() + body)
    fields: dict[str, list[str]] = {}
    files: dict[str, bytes] = {}
    for part in message.iter_parts():
        name = part.get_param("name", header="content-disposition")
        payload = part.get_payload(decode=True) or b""
        if part.get_filename():
            files[name] = payload
        else:
            fields.setdefault(name, []).append(payload.decode())
    return fields, files


def read_wav_bytes(data: bytes) -> np.ndarray:
    """16-bit PCM WAV bytes as mono float32 at 16 kHz."""
    with wave.open(io.BytesIO(data), "rb") as w:
        rate, channels, raw = w.getframerate(), w.getnchannels(), w.readframes(w.getnframes())
    samples = np.frombuffer(raw, "<i2").astype(np.float32) / 32768.0
    if channels > 1:
        samples = samples.reshape(-1, channels).mean(axis=1)
    return resample(samples, rate, SAMPLE_RATE)


class OpenAITranscriptionServer:
    """``with OpenAITranscriptionServer(backend, api_key) as base_url: ...`` on a free loopback port."""

    def __init__(self, backend: AsrBackend, api_key: str = "") -> None:
        self.backend = backend
        self.api_key = api_key
        self.requests: list[dict[str, list[str]]] = []
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self._httpd.server_address[1]}/v1"

    def __enter__(self) -> str:
        self._thread.start()
        return self.base_url

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:  # keep test output quiet
                pass

            def _reply(self, status: int, body: dict) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_POST(self) -> None:  # noqa: N802 - http.server API
                if self.path.rstrip("/") != "/v1/audio/transcriptions":
                    self._reply(404, {"error": {"message": f"no route {self.path}"}})
                    return
                if server.api_key and self.headers.get("Authorization") != f"Bearer {server.api_key}":
                    self._reply(401, {"error": {"message": "Incorrect API key provided"}})
                    return
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                fields, files = parse_multipart(self.headers.get("Content-Type", ""), body)
                server.requests.append(fields)
                if "file" not in files or "model" not in fields:
                    self._reply(400, {"error": {"message": "file and model are required"}})
                    return
                samples = read_wav_bytes(files["file"])
                want_words = "word" in fields.get("timestamp_granularities[]", [])
                language = fields.get("language", [""])[0]
                rec = server.backend.transcribe(samples, language, want_words)
                if fields.get("response_format", ["json"])[0] != "verbose_json":
                    self._reply(200, {"text": rec.text})
                    return
                words = [{"word": w.word, "start": w.start_s, "end": w.end_s} for w in rec.words]
                self._reply(
                    200,
                    {
                        "task": "transcribe",
                        "language": "english" if rec.language == "en" else rec.language,
                        "duration": len(samples) / SAMPLE_RATE,
                        "text": rec.text,
                        "segments": [{"id": 0, "start": 0.0, "end": len(samples) / SAMPLE_RATE, "text": rec.text}],
                        **({"words": words} if want_words else {}),
                    },
                )

        return Handler
