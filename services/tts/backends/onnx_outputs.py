"""Expose an intermediate tensor of an ONNX model as an extra graph output, without the ``onnx`` package.

An ONNX file is a serialized ``ModelProto``. Protobuf parsers merge a repeated occurrence of an embedded
message field into the first one and append repeated fields, so appending the bytes of
``ModelProto{graph: GraphProto{output: [ValueInfoProto{name, type}]}}`` to the file adds one graph
output - the same result as ``model.graph.output.append(...)`` with the onnx library, at no cost.

Field numbers (onnx.proto3): ModelProto.graph = 7, GraphProto.output = 12, ValueInfoProto.name = 1,
ValueInfoProto.type = 2, TypeProto.tensor_type = 1, TypeProto.Tensor.elem_type = 1.
"""

from __future__ import annotations

ELEM_FLOAT = 1
ELEM_INT64 = 7


def _varint(value: int) -> bytes:
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _bytes_field(number: int, payload: bytes) -> bytes:
    return _varint(number << 3 | 2) + _varint(len(payload)) + payload


def _int_field(number: int, value: int) -> bytes:
    return _varint(number << 3) + _varint(value)


def add_output(model: bytes, tensor: str, elem_type: int = ELEM_INT64) -> bytes:
    """``model`` (ONNX bytes) with ``tensor`` appended to the graph outputs (shape left to inference)."""
    tensor_type = _bytes_field(1, _int_field(1, elem_type))
    value_info = _bytes_field(1, tensor.encode()) + _bytes_field(2, tensor_type)
    return model + _bytes_field(7, _bytes_field(12, value_info))
