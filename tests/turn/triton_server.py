"""An in-process server speaking Triton's gRPC inference protocol (tritonclient's own generated service),
backed by the real smart-turn ONNX model. Stands in for tritonserver, which cannot run here."""

from __future__ import annotations

from concurrent import futures

import grpc
import numpy as np
from tritonclient.grpc import service_pb2, service_pb2_grpc

from services.turn.backends.base import onnx_session
from services.turn.backends.smart_turn import default_model_path

DTYPES = {"FP32": np.float32}


class SmartTurnTriton(service_pb2_grpc.GRPCInferenceServiceServicer):
    """Serves one model, ``model_name``, with inputs/outputs named as in the ONNX file."""

    def __init__(self, model_name: str = "smart_turn") -> None:
        self.model_name = model_name
        self.session = onnx_session(default_model_path(), ["CPUExecutionProvider"], 1)
        self.infer_calls = 0

    def ServerLive(self, request, context):  # noqa: N802
        return service_pb2.ServerLiveResponse(live=True)

    def ServerReady(self, request, context):  # noqa: N802
        return service_pb2.ServerReadyResponse(ready=True)

    def ModelReady(self, request, context):  # noqa: N802
        return service_pb2.ModelReadyResponse(ready=request.name == self.model_name)

    def ServerMetadata(self, request, context):  # noqa: N802
        return service_pb2.ServerMetadataResponse(name="fake-triton", version="2.45.0")

    def ModelMetadata(self, request, context):  # noqa: N802
        self._check(request.name, context)
        meta = service_pb2.ModelMetadataResponse(name=self.model_name, versions=["1"], platform="onnxruntime_onnx")
        meta.inputs.add(name="input_features", datatype="FP32", shape=[-1, 80, 800])
        meta.outputs.add(name="logits", datatype="FP32", shape=[-1, 1])
        return meta

    def ModelInfer(self, request, context):  # noqa: N802
        self._check(request.model_name, context)
        feeds = {}
        for i, tensor in enumerate(request.inputs):
            if tensor.datatype not in DTYPES:
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported datatype {tensor.datatype}")
            raw = request.raw_input_contents[i]
            feeds[tensor.name] = np.frombuffer(raw, DTYPES[tensor.datatype]).reshape(list(tensor.shape))
        wanted = [o.name for o in request.outputs] or [o.name for o in self.session.get_outputs()]
        try:
            results = self.session.run(wanted, feeds)
        except Exception as exc:  # noqa: BLE001 - report as Triton would
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"inference failed: {exc}")
        self.infer_calls += 1
        response = service_pb2.ModelInferResponse(model_name=self.model_name, model_version="1", id=request.id)
        for name, value in zip(wanted, results, strict=True):
            response.outputs.add(name=name, datatype="FP32", shape=list(value.shape))
            response.raw_output_contents.append(np.ascontiguousarray(value, "<f4").tobytes())
        return response

    def _check(self, name: str, context) -> None:
        if name != self.model_name:
            context.abort(grpc.StatusCode.NOT_FOUND, f"Request for unknown model: '{name}' is not found")


def start(model_name: str = "smart_turn") -> tuple[grpc.Server, int, SmartTurnTriton]:
    """Start the server on a free loopback port (threads, independent of any event loop)."""
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    servicer = SmartTurnTriton(model_name)
    service_pb2_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    return server, port, servicer
