"""smart-turn served by NVIDIA Triton Inference Server, called over Triton's gRPC protocol.

The service computes the log-mel features (numpy, ~4 ms) and sends them as ``input_features`` FP32
[1, 80, 800]; Triton runs the ONNX model (onnxruntime backend, GPU or CPU) and returns ``logits`` FP32
[1, 1] (a probability). A model repository for it is in ``services/turn/triton/`` (copy the
smart-turn ONNX file in as ``smart_turn/1/model.onnx``).

Requires ``tritonclient[grpc]``; with grpcio 1.62 / protobuf 4.25 the newest release that imports is
2.45.0 (later ones ship gRPC code generated for grpcio >= 1.64 or need protobuf 5).
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any

import numpy as np

from parley.errors import BackendUnavailable
from services.turn.backends.base import EndOfTurnModel
from services.turn.backends.smart_turn import features
from services.turn.config import TritonConfig


def _client_module() -> Any:
    try:
        import tritonclient.grpc as grpcclient
    except ImportError as exc:  # pragma: no cover - depends on the image
        raise RuntimeError(
            "end_of_turn.backend=triton needs tritonclient: pip install 'tritonclient[grpc]==2.45.0'"
        ) from exc
    return grpcclient


class TritonSmartTurn(EndOfTurnModel):
    """End-of-turn over Triton gRPC. One client per worker thread (tritonclient is not thread-safe)."""

    def __init__(self, config: TritonConfig) -> None:
        self.config = config
        self._grpc = _client_module()
        self._local = threading.local()
        self._clients: list[Any] = []
        self._lock = threading.Lock()

    def _client(self) -> Any:
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._grpc.InferenceServerClient(url=self.config.url, ssl=self.config.ssl)
            self._local.client = client
            with self._lock:
                self._clients.append(client)
        return client

    def predict(self, audio: np.ndarray) -> float:
        grpc = self._grpc
        feats = features(audio)
        inp = grpc.InferInput(self.config.input_name, list(feats.shape), "FP32")
        inp.set_data_from_numpy(feats)
        out = grpc.InferRequestedOutput(self.config.output_name)
        try:
            result = self._client().infer(
                self.config.model_name,
                [inp],
                model_version=self.config.model_version,
                outputs=[out],
                client_timeout=self.config.timeout_s,
            )
        except Exception as exc:
            raise BackendUnavailable(f"triton {self.config.url} model {self.config.model_name}: {exc}") from exc
        prob = result.as_numpy(self.config.output_name)
        if prob is None or prob.size < 1:
            raise BackendUnavailable(f"triton returned no {self.config.output_name!r} output")
        return float(np.clip(prob.reshape(-1)[0], 0.0, 1.0))

    def is_ready(self) -> bool:
        """True when the server is up and the model is loaded."""
        try:
            client = self._client()
            return bool(
                client.is_server_ready(client_timeout=self.config.timeout_s)
                and client.is_model_ready(
                    self.config.model_name, self.config.model_version, client_timeout=self.config.timeout_s
                )
            )
        except Exception:
            return False

    async def wait_ready(self) -> None:
        """Poll Triton until the model is ready; BackendUnavailable after ``startup_timeout_s``."""
        deadline = time.monotonic() + self.config.startup_timeout_s
        while not await asyncio.to_thread(self.is_ready):
            if time.monotonic() >= deadline:
                raise BackendUnavailable(
                    f"triton at {self.config.url} has no ready model {self.config.model_name!r} "
                    f"after {self.config.startup_timeout_s:.0f} s"
                )
            await asyncio.sleep(0.5)

    def close(self) -> None:
        with self._lock:
            clients, self._clients = self._clients, []
        for client in clients:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - best effort on shutdown
                pass
