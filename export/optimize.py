"""ONNX Runtime's transformer optimizer for CPU deployment, with the checks that make it safe.

``optimize_for_cpu`` exports the model's fusable form (``uvc.export.fusable``), runs
``onnxruntime.transformers.optimizer`` (``model_type="vit"``) with the fusions that help on CPU
and keep the graph exact, and checks the result:

- every block whose attention can be fused is fused (the count of ``Attention`` nodes is exactly
  the number of fusable blocks);
- every fused ``Attention`` node's implicit scale, 1/sqrt(head size), is the scale the graph had
  before fusion (read from the ``Div`` after q.k^T): the fused op ignores that constant, so a
  mismatch would silently change outputs; ``ScaleError`` refuses such a graph.

Fusions used: Attention (separate q/k/v projections packed into one op), LayerNormalization and
BiasGelu (exact erf GELU). Not used: FastGelu / GELU approximation (about 8e-4 logit error),
MultiHeadAttention (fails to load when qk_dim != v_dim), EmbedLayerNormalization (BERT-only) and,
by default, SkipLayerNormalization, which was slower than LayerNormalization + Add on the CPU it
was measured on (see the README); ``skip_layer_norm=True`` turns it on.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING, Any

from uvc.errors import BackendUnavailable, ExportError

if TYPE_CHECKING:
    import onnx
    import torch
    from uvc.export.fusable import BlockFusion
    from uvc.export.onnx import Exporter

log = logging.getLogger(__name__)

OPT_ONNX = "model.opt.onnx"
# Loggers of onnxruntime.transformers (its modules import each other as top-level names): they
# warn about hidden sizes and head counts they cannot guess, which the checks here cover.
_ORT_LOGGER_PREFIXES = ("onnxruntime", "fusion_", "onnx_model", "shape_infer", "float16")
# Fused op types whose counts ``export.json`` records.
_FUSED_OPS = (
    "Attention",
    "MultiHeadAttention",
    "LayerNormalization",
    "SkipLayerNormalization",
    "Gelu",
    "BiasGelu",
    "FastGelu",
)


class OptimizeTarget(str, Enum):
    """What ``uvc export --optimize`` optimizes for."""

    NONE = "none"
    CPU = "cpu"  # ONNX Runtime's CPU execution provider


class FusionError(ExportError):
    """ONNX Runtime's optimizer did not fuse what it had to (a pattern it did not recognise)."""


class ScaleError(ExportError):
    """A fused Attention node would use a scale other than the graph's: outputs would change."""


@dataclass(frozen=True)
class OptimizeOptions:
    """Which fusions ``optimize_onnx`` applies.

    Args:
        skip_layer_norm: fuse residual Add + LayerNormalization into SkipLayerNormalization
            (off: it was slower on the CPU measured, see the README).
    """

    skip_layer_norm: bool = False


@dataclass(frozen=True)
class OptimizeResult:
    """What ``optimize_onnx`` wrote and checked.

    Args:
        path: the optimized graph.
        fusions: number of nodes of each fused op type in it (nonzero counts only).
        expected_attention: blocks whose attention had to be fused.
        scales: per fused Attention node, (graph scale before fusion, 1/sqrt(head size)).
        optimize_s: seconds spent in ONNX Runtime's optimizer.
        options: the options used.
        blocks: per block of the model, whether it was fusable and why not (from the model).
    """

    path: Path
    fusions: dict[str, int]
    expected_attention: int
    scales: tuple[tuple[float, float], ...]
    optimize_s: float
    options: OptimizeOptions
    blocks: tuple[BlockFusion, ...] = field(default=())

    def to_dict(self) -> dict[str, Any]:
        """Plain data for ``export.json``."""
        return {
            "file": self.path.name,
            "target": OptimizeTarget.CPU.value,
            "optimizer": "onnxruntime.transformers.optimizer (model_type=vit, opt_level=0)",
            "skip_layer_norm": self.options.skip_layer_norm,
            "fusions": self.fusions,
            "attention": {
                "expected": self.expected_attention,
                "fused": self.fusions.get("Attention", 0),
                "max_scale_rel_error": max((abs(g - f) / f for g, f in self.scales), default=0.0),
                "unfused_blocks": [
                    {"block": b.block, "reason": b.reason} for b in self.blocks if not b.fusable
                ],
            },
            "optimize_s": round(self.optimize_s, 3),
        }


def fusion_options(options: OptimizeOptions) -> Any:
    """ONNX Runtime's ``FusionOptions`` for ``options`` (exact fusions only)."""
    from onnxruntime.transformers.fusion_options import FusionOptions

    fo = FusionOptions("vit")
    fo.enable_attention = True
    fo.use_multi_head_attention = False  # MultiHeadAttention fails to load when qk != v
    fo.enable_layer_norm = True
    fo.enable_gelu = True
    fo.enable_bias_gelu = True
    fo.enable_gelu_approximation = False  # FastGelu: ~8e-4 logit error
    fo.enable_gemm_fast_gelu = False
    fo.enable_embed_layer_norm = False  # BERT's word/position embeddings, nothing here
    fo.enable_skip_layer_norm = options.skip_layer_norm
    fo.enable_bias_skip_layer_norm = options.skip_layer_norm
    return fo


def optimize_onnx(
    src: Path,
    dst: Path,
    *,
    expected_attention: int,
    options: OptimizeOptions | None = None,
) -> OptimizeResult:
    """Run ONNX Runtime's ViT optimizer on ``src`` and write the checked result to ``dst``.

    Args:
        src: an FP32 ONNX graph, ideally in the fusable form (``uvc.export.fusable``).
        dst: where the optimized graph goes (weights beside it if ``src`` had external data).
        expected_attention: how many Attention nodes the result must have.
        options: the fusions to apply.

    Raises:
        BackendUnavailable: onnxruntime's transformer tools are missing.
        FusionError: not exactly ``expected_attention`` Attention nodes were fused.
        ScaleError: a fused Attention node's scale differs from the graph's.
    """
    import onnx
    from uvc.export.onnx import save_onnx

    options = options or OptimizeOptions()
    try:
        from onnxruntime.transformers.optimizer import optimize_model
    except ImportError as exc:
        raise BackendUnavailable(f"onnxruntime's transformer optimizer is missing: {exc}") from None
    src, dst = Path(src), Path(dst)
    before = onnx.load(str(src))
    graph_scales = attention_scales(before)
    external = (src.parent / (src.name + ".data")).exists()
    start = time.perf_counter()
    with _quiet_ort():
        # opt_level=0: only the Python fusions; ONNX Runtime's own graph optimizations run when
        # the session loads the graph, on the machine that runs it.
        optimized = optimize_model(
            before,
            model_type="vit",
            optimization_options=fusion_options(options),
            opt_level=0,
            use_gpu=False,
        )
    seconds = time.perf_counter() - start
    proto = optimized.model
    fusions = _fused_counts(proto)
    got = fusions.get("Attention", 0)
    if got != expected_attention or fusions.get("MultiHeadAttention"):
        raise FusionError(
            f"ONNX Runtime fused {got} attention blocks, expected {expected_attention}: the graph "
            "is not in the form its attention fusion recognises (export it with "
            "uvc.export.fusable.fusable_copy)"
        )
    scales = check_fused_scales(proto, graph_scales)
    save_onnx(proto, dst, external=external)
    log.info("optimized %s -> %s: %s", src.name, dst.name, fusions)
    return OptimizeResult(dst, fusions, expected_attention, scales, seconds, options)


def attention_scales(proto: onnx.ModelProto) -> dict[str, float]:
    """The effective scale of every unfused ``Softmax(Div(MatMul(q, k^T), c))`` attention.

    Keyed by the output of the ``Reshape`` that merges the heads after ``Softmax(...) @ v``: the
    fused Attention node takes over exactly that output name, which links it back to its scale.
    """
    from onnx import numpy_helper

    producer = {o: n for n in proto.graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in proto.graph.node:
        for i in n.input:
            consumers.setdefault(i, []).append(n)
    consts = {t.name: numpy_helper.to_array(t) for t in proto.graph.initializer}
    for n in proto.graph.node:
        if n.op_type == "Constant" and n.attribute and n.attribute[0].name == "value":
            consts[n.output[0]] = numpy_helper.to_array(n.attribute[0].t)
    out: dict[str, float] = {}
    for softmax in (n for n in proto.graph.node if n.op_type == "Softmax"):
        div = producer.get(softmax.input[0])
        if div is None or div.op_type != "Div" or div.input[1] not in consts:
            continue
        divisor = consts[div.input[1]]
        if divisor.size != 1:
            continue
        node = _follow(consumers, softmax, ("MatMul", "Transpose", "Reshape"))
        if node is not None:
            out[node.output[0]] = 1.0 / float(divisor.reshape(()))
    return out


def check_fused_scales(
    proto: onnx.ModelProto, graph_scales: dict[str, float]
) -> tuple[tuple[float, float], ...]:
    """Per fused Attention node, (the graph's scale, 1/sqrt(head size)); ``ScaleError`` if apart.

    The fused op computes softmax(q.k^T / sqrt(head size)) whatever constant the graph divided by
    (it has no ``scale`` attribute here), so the two must agree to float rounding.
    """
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    out = []
    for node in (n for n in proto.graph.node if n.op_type == "Attention"):
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        if "scale" in attrs:
            fused = float(attrs["scale"])
        else:
            sizes = attrs.get("qkv_hidden_sizes")
            if sizes is None:
                sizes = [numpy_helper.to_array(inits[node.input[1]]).shape[1] // 3]
            fused = (int(sizes[0]) // int(attrs["num_heads"])) ** -0.5
        graph = graph_scales.get(node.output[0])
        if graph is None:
            raise ScaleError(
                f"cannot tell which scale the graph gave fused attention {node.name}: refusing "
                "an optimized graph whose outputs cannot be vouched for"
            )
        if not math.isclose(graph, fused, rel_tol=1e-6):
            raise ScaleError(
                f"fused attention {node.name} would use scale {fused:.6g} (1/sqrt(head size)) "
                f"where the graph uses {graph:.6g}: refusing to fuse"
            )
        out.append((graph, fused))
    return tuple(out)


def optimize_for_cpu(
    model: torch.nn.Module,
    dst: Path,
    *,
    options: OptimizeOptions | None = None,
    opset: int | None = None,
    exporter: Exporter | None = None,
) -> OptimizeResult:
    """Export ``model`` (a ``uvc.arch.model.ViT``) in its fusable form and optimize it into ``dst``.

    The intermediate fusable graph lives in a temporary folder beside ``dst``; only the
    optimized graph is kept. Validate ``dst`` against ``model`` afterwards (``validate_onnx``).
    """
    from uvc.export.fusable import fusable_blocks, fusable_copy
    from uvc.export.onnx import MIN_OPSET, Exporter, export_onnx

    blocks = fusable_blocks(model)
    for b in blocks:
        if b.heads and not b.fusable:
            log.warning("block %d stays unfused: %s", b.block, b.reason)
    dst = Path(dst)
    with tempfile.TemporaryDirectory(dir=dst.parent, prefix=".fusable-") as tmp:
        src = Path(tmp) / "fusable.onnx"
        export_onnx(
            fusable_copy(model),
            src,
            opset=opset or MIN_OPSET,
            exporter=exporter or Exporter.DYNAMO,
        )
        expected = sum(b.fusable for b in blocks)
        result = optimize_onnx(src, dst, expected_attention=expected, options=options)
    return dataclasses.replace(result, blocks=blocks)


def _fused_counts(proto: onnx.ModelProto) -> dict[str, int]:
    counts = Counter(n.op_type for n in proto.graph.node)
    return {op: counts[op] for op in _FUSED_OPS if counts[op]}


def _follow(
    consumers: dict[str, list[onnx.NodeProto]], node: onnx.NodeProto, ops: tuple[str, ...]
) -> onnx.NodeProto | None:
    """Walk single-consumer edges from ``node`` through nodes of types ``ops``, in order."""
    for op in ops:
        nxt = consumers.get(node.output[0], [])
        if len(nxt) != 1 or nxt[0].op_type != op:
            return None
        node = nxt[0]
    return node


@contextlib.contextmanager
def _quiet_ort() -> Iterator[None]:
    """Raise onnxruntime.transformers' loggers to ERROR for this call only."""
    names = [n for n in logging.root.manager.loggerDict if n.startswith(_ORT_LOGGER_PREFIXES)]
    loggers = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)
