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
from typing import Any

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
    from uvc.export.onnx import EXTERNAL_DATA_THRESHOLD, save_onnx

    keep = frozenset(keep_fp32_ops)
    proto = onnx.shape_inference.infer_shapes(onnx.load(str(src)))
    _Fp16Rewrite(proto.graph, keep).run()
    # Old intermediate type annotations say FP32; drop them and let inference redo them.
    del proto.graph.value_info[:]
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


class _Fp16Rewrite:
    """The in-place rewrite of one graph: FP16 weights and ops, kept ops in FP32, FP32 I/O."""

    def __init__(self, graph: Any, keep: frozenset[str]) -> None:
        from onnx import TensorProto

        self.graph, self.keep = graph, keep
        _bypass_identities(graph)
        self.types = _elem_types(graph)
        self.consumers: dict[str, list[Any]] = defaultdict(list)
        for node in graph.node:
            for name in node.input:
                self.consumers[name].append(node)
        self.counter = iter(range(1_000_000))
        self.fp32_tensors: set[str] = set()
        self.float_inputs = {
            i.name for i in graph.input if i.type.tensor_type.elem_type == TensorProto.FLOAT
        }
        self.float_outputs = {
            o.name for o in graph.output if o.type.tensor_type.elem_type == TensorProto.FLOAT
        }

    def only_fp32_users(self, name: str) -> bool:
        users = self.consumers.get(name, [])
        return bool(users) and all(u.op_type in self.keep for u in users)

    def cast(self, inp: str, out: str, to: int) -> Any:
        from onnx import helper

        return helper.make_node("Cast", [inp], [out], to=to, name=f"fp16_cast_{next(self.counter)}")

    def run(self) -> None:
        from onnx import TensorProto

        self._initializers()
        new_nodes: list[Any] = []
        # Graph inputs stay FP32: cast each once at the top, and feed the FP16 copy to FP16 ops.
        renamed_in: dict[str, str] = {}
        for name in self.float_inputs:
            renamed_in[name] = f"{name}__fp16"
            new_nodes.append(self.cast(name, renamed_in[name], TensorProto.FLOAT16))
        for node in self.graph.node:
            if node.op_type == "Constant":
                _constant_to_half(node, self.only_fp32_users(node.output[0]))
            elif node.op_type == "Cast" and _attr(node, "to") == TensorProto.FLOAT:
                _set_attr_int(node, "to", TensorProto.FLOAT16)
            if node.op_type in self.keep:
                new_nodes += self._kept_fp32(node)
                continue
            for j, name in enumerate(node.input):
                if name in renamed_in:
                    node.input[j] = renamed_in[name]
            new_nodes.append(node)
            for j, name in enumerate(node.output):
                if name in self.float_outputs:
                    low = f"{name}__fp16"
                    node.output[j] = low
                    new_nodes.append(self.cast(low, name, TensorProto.FLOAT))
        del self.graph.node[:]
        self.graph.node.extend(new_nodes)

    def _initializers(self) -> None:
        """FP16 unless every user is a kept-FP32 op (LayerNorm's scale and bias)."""
        from onnx import TensorProto, numpy_helper

        for i, init in enumerate(self.graph.initializer):
            if init.data_type != TensorProto.FLOAT:
                continue
            if self.only_fp32_users(init.name):
                self.fp32_tensors.add(init.name)
                continue
            arr = numpy_helper.to_array(init)
            self.graph.initializer[i].CopyFrom(numpy_helper.from_array(_to_half(arr), init.name))

    def _kept_fp32(self, node: Any) -> list[Any]:
        """A kept op between Casts: FP32 in (unless already), FP16 out (unless a graph output)."""
        from onnx import TensorProto

        out = []
        for j, name in enumerate(node.input):
            if not name or name in self.fp32_tensors or name in self.float_inputs:
                continue  # FP32 already (a kept weight, or the graph's FP32 input itself)
            if self.types.get(name) == TensorProto.FLOAT:
                up = f"{name}__fp32_{next(self.counter)}"
                out.append(self.cast(name, up, TensorProto.FLOAT))
                node.input[j] = up
        out.append(node)
        for j, name in enumerate(node.output):
            if name in self.float_outputs:
                continue  # FP32 result is what the graph output wants
            low = f"{name}__fp32out"
            node.output[j] = low
            out.append(self.cast(low, name, TensorProto.FLOAT16))
        return out


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
