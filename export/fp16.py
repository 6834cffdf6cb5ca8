"""FP32 ONNX graph -> FP16 graph, with numerically sensitive ops kept in FP32.

TensorRT 11 networks are strongly typed: the graph's types decide the precision, so an FP16 engine
needs an FP16 graph. LayerNormalization (a variance over 192-768 values), Softmax and reductions
lose too much in FP16, so they run in FP32 between Casts; every other float tensor, initializer and
constant becomes FP16. The graph's input ``images`` and output ``logits`` stay FP32 (Casts at the
edges), so callers feed and read the same tensors as for the FP32 graph.

Written with the plain ``onnx`` API: no extra dependency.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import numpy as np

from uvc.errors import ExportError

log = logging.getLogger(__name__)

# Ops that compute in FP32: statistics over many values (mean/variance, exp-sum) lose the most.
KEEP_FP32_OPS: frozenset[str] = frozenset(
    {
        "LayerNormalization",
        "Softmax",
        "LogSoftmax",
        "ReduceMean",
        "ReduceSum",
        "ReduceSumSquare",
        "ReduceL2",
        "ReduceLogSumExp",
        "Pow",
        "Sqrt",
    }
)


def convert_to_fp16(src: Path, dst: Path, *, keep_fp32_ops: Iterable[str] = KEEP_FP32_OPS) -> Path:
    """Write an FP16 copy of the FP32 ONNX graph ``src`` to ``dst``.

    Args:
        src: an FP32 graph (e.g. from ``uvc.export.onnx.export_onnx``).
        dst: the FP16 graph to write (single file; external data beyond 1.8 GB like the FP32 one).
        keep_fp32_ops: op types that stay FP32, fed and read through Casts.

    Returns:
        ``dst``.

    Raises:
        ExportError: the converted graph fails ``onnx.checker``.
    """
    import onnx
    from onnx import TensorProto, helper, numpy_helper
    from uvc.export.onnx import EXTERNAL_DATA_THRESHOLD, save_onnx

    keep = frozenset(keep_fp32_ops)
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    graph = proto.graph
    _bypass_identities(graph)
    types = _elem_types(graph)
    consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for node in graph.node:
        for name in node.input:
            consumers[name].append(node)

    def only_fp32_users(name: str) -> bool:
        users = consumers.get(name, [])
        return bool(users) and all(u.op_type in keep for u in users)

    # Initializers: FP16 unless every user is a kept-FP32 op (LayerNorm's scale and bias).
    fp32_tensors: set[str] = set()
    for i, init in enumerate(graph.initializer):
        if init.data_type != TensorProto.FLOAT:
            continue
        if only_fp32_users(init.name):
            fp32_tensors.add(init.name)
            continue
        arr = numpy_helper.to_array(init)
        half = numpy_helper.from_array(_to_half(arr), init.name)
        graph.initializer[i].CopyFrom(half)

    new_nodes: list[onnx.NodeProto] = []
    counter = iter(range(1_000_000))

    def cast(inp: str, out: str, to: int) -> onnx.NodeProto:
        return helper.make_node("Cast", [inp], [out], to=to, name=f"fp16_cast_{next(counter)}")

    float_inputs = {
        i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT
    }
    # Graph inputs stay FP32: cast each once at the top, and feed the FP16 copy to FP16 ops.
    renamed_in: dict[str, str] = {}
    for name in float_inputs:
        renamed_in[name] = f"{name}__fp16"
        new_nodes.append(cast(name, renamed_in[name], TensorProto.FLOAT16))
    float_outputs = {
        o.name for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT
    }

    for node in graph.node:
        if node.op_type == "Constant":
            _constant_to_half(node, only_fp32_users(node.output[0]))
        elif node.op_type == "Cast" and _attr(node, "to") == TensorProto.FLOAT:
            _set_attr_int(node, "to", TensorProto.FLOAT16)
        if node.op_type in keep:
            for j, name in enumerate(node.input):
                if not name or name in fp32_tensors:
                    continue
                if name in float_inputs:  # the FP32 original is right here
                    continue
                if types.get(name) == TensorProto.FLOAT:
                    up = f"{name}__fp32_{next(counter)}"
                    new_nodes.append(cast(name, up, TensorProto.FLOAT))
                    node.input[j] = up
            new_nodes.append(node)
            for j, name in enumerate(node.output):
                if name in float_outputs:
                    continue  # FP32 result is what the graph output wants
                low = f"{name}__fp32out"
                node.output[j] = low
                new_nodes.append(cast(low, name, TensorProto.FLOAT16))
            continue
        for j, name in enumerate(node.input):
            if name in renamed_in:
                node.input[j] = renamed_in[name]
        new_nodes.append(node)
        for j, name in enumerate(node.output):
            if name in float_outputs:
                low = f"{name}__fp16"
                node.output[j] = low
                new_nodes.append(cast(low, name, TensorProto.FLOAT))

    del graph.node[:]
    graph.node.extend(new_nodes)
    # Old intermediate type annotations say FP32; drop them and let inference redo them.
    del graph.value_info[:]
    try:
        proto = onnx.shape_inference.infer_shapes(proto, strict_mode=True)
    except Exception as exc:  # onnx raises InferenceError and friends
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ExportError(f"the FP16 graph of {Path(src).name} is inconsistent: {first}") from exc
    dst = Path(dst)
    save_onnx(proto, dst, external=proto.ByteSize() >= EXTERNAL_DATA_THRESHOLD)
    try:
        onnx.checker.check_model(str(dst), full_check=True)
    except Exception as exc:
        raise ExportError(
            f"FP16 graph {dst} fails onnx.checker: {str(exc).splitlines()[0]}"
        ) from exc
    log.info("wrote FP16 graph %s (FP32 ops: %s)", dst, ", ".join(sorted(keep)))
    return dst


def _to_half(arr: np.ndarray) -> np.ndarray:
    """FP32 -> FP16 with values beyond FP16's range clipped instead of becoming inf."""
    limit = float(np.finfo(np.float16).max)
    return np.clip(arr, -limit, limit).astype(np.float16)


def _bypass_identities(graph) -> None:
    """Drop Identity nodes that alias an initializer, so each weight's real users are visible.

    The TorchScript exporter shares equal initializers (every fresh LayerNorm's ones and zeros)
    through Identity nodes; without this, LayerNorm's scale would look FP16-bound.
    """
    inits = {i.name for i in graph.initializer}
    outputs = {o.name for o in graph.output}
    alias = {
        n.output[0]: n.input[0]
        for n in graph.node
        if n.op_type == "Identity" and n.input[0] in inits and n.output[0] not in outputs
    }
    if not alias:
        return
    kept = [n for n in graph.node if not (n.op_type == "Identity" and n.output[0] in alias)]
    for n in kept:
        for j, name in enumerate(n.input):
            if name in alias:
                n.input[j] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)


def _elem_types(graph) -> dict[str, int]:
    """Element type of every tensor whose type the (shape-inferred) FP32 graph records."""
    types: dict[str, int] = {}
    for v in [*graph.input, *graph.output, *graph.value_info]:
        types[v.name] = v.type.tensor_type.elem_type
    for init in graph.initializer:
        types[init.name] = init.data_type
    for node in graph.node:
        if node.op_type == "Constant":
            for a in node.attribute:
                if a.name == "value":
                    types[node.output[0]] = a.t.data_type
    return types


def _attr(node, name: str):
    from onnx import helper

    for a in node.attribute:
        if a.name == name:
            return helper.get_attribute_value(a)
    return None


def _set_attr_int(node, name: str, value: int) -> None:
    for a in node.attribute:
        if a.name == name:
            a.i = value


def _constant_to_half(node, keep_fp32: bool) -> None:
    from onnx import TensorProto, numpy_helper

    if keep_fp32:
        return
    for a in node.attribute:
        if a.name == "value" and a.t.data_type == TensorProto.FLOAT:
            arr = numpy_helper.to_array(a.t)
            a.t.CopyFrom(numpy_helper.from_array(_to_half(arr), a.t.name))
        elif a.name in ("value_float", "value_floats"):
            raise ExportError(f"Constant node {node.name} uses {a.name}; not supported in FP16")
