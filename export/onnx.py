"""ONNX export of a ``uvc.arch.model.ViT`` and its validation against PyTorch with ONNX Runtime.

Export and validation are separate functions (as in optimum): ``export_onnx`` writes a graph,
``validate_onnx`` runs it and compares it with the PyTorch model, the caller decides what is fatal.

Graph contract: one input ``images`` (batch, C, H, W) float32, one output ``logits``
(batch, num_classes); the batch axis is dynamic, everything else is fixed by the spec.

External data: a graph whose weights stay under ``EXTERNAL_DATA_THRESHOLD`` (1.8 GB, protobuf's hard
limit is 2 GB) is written as one self-contained ``.onnx`` file, which every runtime and copy tool
handles; beyond that the weights go to ``<name>.onnx.data`` beside it, which must travel with it.
"""

from __future__ import annotations

import contextlib
import logging
import warnings
from enum import Enum
from pathlib import Path
from typing import TYPE_CHECKING

import torch

if TYPE_CHECKING:
    import onnx

from uvc.export.validate import Comparison, ValidationReport, compare, require_tolerance

from uvc.errors import ExportError

log = logging.getLogger(__name__)

INPUT_NAME = "images"
OUTPUT_NAME = "logits"
MIN_OPSET = 17  # LayerNormalization is an ONNX op from opset 17 on
# Protobuf cannot serialize a message over 2 GiB; keep a margin for the graph itself.
EXTERNAL_DATA_THRESHOLD = 1_800_000_000
MAX_DYNAMIC_BATCH = 4096


class Exporter(str, Enum):
    """Which ``torch.onnx.export`` path builds the graph.

    DYNAMO (torch.export, the default since torch 2.9) gives the cleaner graph (SDPA becomes
    MatMul/Softmax, LayerNormalization stays one op) but emits opset 18 and converts it down when
    opset 17 is asked; TORCHSCRIPT emits opset 17 natively and is ~10x faster to run, which the test
    suite uses. Both are validated the same way.
    """

    DYNAMO = "dynamo"
    TORCHSCRIPT = "torchscript"


def input_shape(model: torch.nn.Module, batch: int) -> tuple[int, int, int, int]:
    """The (batch, C, H, W) input shape of a ``uvc.arch.model.ViT`` from its spec."""
    spec = getattr(model, "spec", None)
    if spec is None:
        raise ExportError("export needs a uvc.arch.model.ViT (a model with a .spec)")
    return (batch, spec.in_chans, spec.img_size, spec.img_size)


def _param_bytes(model: torch.nn.Module) -> int:
    return sum(t.numel() * t.element_size() for t in model.state_dict().values())


def export_onnx(
    model: torch.nn.Module,
    path: Path,
    *,
    opset: int = MIN_OPSET,
    batch: int = 2,
    exporter: Exporter = Exporter.DYNAMO,
) -> Path:
    """Export ``model`` to ONNX with a dynamic batch axis.

    Args:
        model: a ``uvc.arch.model.ViT`` (exported in eval mode, on CPU, in float32; not modified).
        path: the ``.onnx`` file to write (its folder must exist).
        opset: ONNX opset, at least 17.
        batch: the batch size of the example input used for tracing (any size then runs).
        exporter: ``Exporter.DYNAMO`` or ``Exporter.TORCHSCRIPT``.

    Returns:
        ``path``. Weights are inside it unless the model is over ``EXTERNAL_DATA_THRESHOLD``
        bytes, then in ``<path>.data`` beside it.

    Raises:
        ExportError: opset too low, not a ViT, or the exporter failed.
    """
    if opset < MIN_OPSET:
        raise ExportError(f"opset {opset} is too old: uvc exports at opset {MIN_OPSET} or newer")
    if batch < 1:
        raise ExportError(f"the example batch must be at least 1, got {batch}")
    exporter = Exporter(exporter)
    path = Path(path)
    shape = input_shape(model, batch)
    # Export a float32 CPU copy in eval mode so the caller's model keeps its device, dtype, mode.
    import copy

    m = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    if hasattr(m, "distilled_training"):
        m.distilled_training = False
    x = torch.randn(*shape)
    external = _param_bytes(m) >= EXTERNAL_DATA_THRESHOLD
    try:
        trace_to_onnx(m, x, path, exporter, opset, external=external)
    except Exception as exc:  # the exporters raise many unrelated types
        raise ExportError(f"ONNX export ({exporter.value}) failed: {_first_line(exc)}") from exc
    if exporter is Exporter.TORCHSCRIPT and external:
        _move_to_external(path)
    log.info("exported %s (%s exporter, opset %d)", path, exporter.value, opset)
    return path


def trace_to_onnx(
    module: torch.nn.Module,
    x: torch.Tensor,
    path: Path,
    exporter: Exporter | str = Exporter.DYNAMO,
    opset: int = MIN_OPSET,
    *,
    external: bool = False,
    names: tuple[str, str] = (INPUT_NAME, OUTPUT_NAME),
) -> None:
    """``torch.onnx.export`` of ``module`` on the example ``x``, with a dynamic batch axis.

    The one place both exporters are driven (``export_onnx`` for whole models, the latency
    tables for sub-layers); the caller owns eval mode, device and error handling.
    """
    inp, out = names
    kw = {"input_names": [inp], "output_names": [out], "opset_version": opset}
    with torch.no_grad(), _quiet_exporter():
        if Exporter(exporter) is Exporter.DYNAMO:
            batch_dim = torch.export.Dim("batch", min=1, max=MAX_DYNAMIC_BATCH)
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=True,
                verbose=False,
                dynamic_shapes=({0: batch_dim},),
                external_data=external,
                **kw,
            )
        else:
            torch.onnx.export(
                module,
                (x,),
                str(path),
                dynamo=False,
                dynamic_axes={inp: {0: "batch"}, out: {0: "batch"}},
                **kw,
            )


@contextlib.contextmanager
def _quiet_exporter():
    """Silence the exporters' deprecation and progress chatter for this call only."""
    # onnx_ir logs every graph rewrite at INFO; torch's exporter sets levels on its own
    # child loggers, so those are named one by one.
    names = (
        "torch.onnx",
        "torch.onnx._internal.exporter._compat",
        "torch.onnx._internal.exporter._core",
        "torch.onnx._internal.exporter._registration",
        "torch.export",
        "onnxscript",
        "onnx_ir",
    )
    noisy = [logging.getLogger(n) for n in names]
    levels = [lg.level for lg in noisy]
    try:
        for lg in noisy:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            warnings.simplefilter("ignore", UserWarning)
            yield
    finally:
        for lg, level in zip(noisy, levels, strict=True):
            lg.setLevel(level)


def save_onnx(proto: onnx.ModelProto, path: Path, external: bool) -> Path:
    """Write ``proto`` to ``path``: self-contained, or weights in ``<name>.data`` beside it."""
    import onnx

    onnx.save_model(
        proto,
        str(path),
        save_as_external_data=external,
        all_tensors_to_one_file=True,
        location=Path(path).name + ".data",
    )
    return Path(path)


def _move_to_external(path: Path) -> None:
    import onnx

    save_onnx(onnx.load(str(path)), path, external=True)


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def check_onnx(path: Path, opset: int | None = None) -> None:
    """Run ``onnx.checker`` (full check, with shape inference) and the I/O contract checks.

    Raises:
        ExportError: the graph is invalid, has the wrong I/O names, a static batch axis, or an
            opset other than ``opset``.
    """
    import onnx

    path = Path(path)
    try:
        # A path (not a proto) lets the checker follow external data of large models.
        onnx.checker.check_model(str(path), full_check=True)
    except Exception as exc:
        raise ExportError(f"{path} fails onnx.checker: {str(exc).splitlines()[0]}") from exc
    proto = onnx.load(str(path), load_external_data=False)
    inputs = [i.name for i in proto.graph.input]
    outputs = [o.name for o in proto.graph.output]
    if inputs != [INPUT_NAME] or outputs != [OUTPUT_NAME]:
        raise ExportError(
            f"{path}: expected I/O {INPUT_NAME}->{OUTPUT_NAME}, got {inputs}->{outputs}"
        )
    dim0 = proto.graph.input[0].type.tensor_type.shape.dim[0]
    if not dim0.dim_param:
        raise ExportError(f"{path}: the batch axis is static ({dim0.dim_value}), expected dynamic")
    got = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is not None and got != opset:
        raise ExportError(f"{path}: opset {got}, expected {opset}")


def input_shape_of(path: Path) -> tuple[int, ...]:
    """The per-sample input shape (C, H, W) recorded in an ONNX graph."""
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    dims = proto.graph.input[0].type.tensor_type.shape.dim[1:]
    return tuple(int(d.dim_value) for d in dims)


def ort_session(path: Path, threads: int | None = None):
    """An ONNX Runtime CPU session for ``path`` (``threads`` intra-op threads; None: default)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if threads is not None:
        opts.intra_op_num_threads = threads
    opts.log_severity_level = 3  # errors only: ORT warns about every unused initializer
    return ort.InferenceSession(str(path), sess_options=opts, providers=["CPUExecutionProvider"])


def validate_onnx(
    model: torch.nn.Module,
    path: Path,
    inputs: list[torch.Tensor],
    *,
    atol: float | None = None,
    name: str = "onnx",
) -> ValidationReport:
    """Run ``path`` with ONNX Runtime on each input batch and compare with ``model`` (float32, CPU).

    Args:
        model: the PyTorch reference (a ``uvc.arch.model.ViT``).
        path: the ONNX graph; its input may be float32 or float16 (inputs are cast to match).
        inputs: image batches (B, C, H, W), at least two different batch sizes to prove the
            dynamic axis.
        atol: when given, raise ``AtolError`` if any max |difference| exceeds it.
        name: what is validated, for the report and the error message.

    Returns:
        A ``ValidationReport`` with one ``Comparison`` per batch.
    """
    import copy

    import numpy as np

    ref_model = copy.deepcopy(model).to(device="cpu", dtype=torch.float32).eval()
    try:
        sess = ort_session(path)
    except Exception as exc:  # onnxruntime raises its own exception classes
        raise ExportError(
            f"ONNX Runtime cannot load {Path(path).name}: {_first_line(exc)}"
        ) from exc
    in_type = sess.get_inputs()[0].type
    np_dtype = np.float16 if "float16" in in_type else np.float32
    rows: list[Comparison] = []
    for x in inputs:
        x = x.detach().to(device="cpu", dtype=torch.float32)
        with torch.no_grad():
            ref = ref_model(x)
        try:
            (out,) = sess.run([OUTPUT_NAME], {INPUT_NAME: x.numpy().astype(np_dtype)})
        except Exception as exc:
            raise ExportError(
                f"ONNX Runtime fails on {Path(path).name} at batch {x.shape[0]}: {_first_line(exc)}"
            ) from exc
        rows.append(compare(ref, torch.from_numpy(out.astype(np.float32))))
    report = ValidationReport(name=name, runtime="onnxruntime-cpu", comparisons=tuple(rows))
    if atol is not None:
        require_tolerance(report, atol)
    return report


class OnnxClassifier(torch.nn.Module):
    """An exported graph (``model.onnx``, ``model.int8.onnx``, ...) run by ONNX Runtime on the CPU,
    wrapped as a module so that code scoring PyTorch models (``uvc eval``) scores it alike.

    Args:
        path: the graph (input ``images``, output ``logits``).
        spec: the model's spec (its image size and preprocessing decide how images are fed).
        threads: ONNX Runtime intra-op threads (None: its default).
    """

    def __init__(self, path: str | Path, spec: object, threads: int | None = None) -> None:
        super().__init__()
        self.path = Path(path)
        self.spec = spec
        self.threads = threads
        self._session = None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Images (B, C, H, W) -> logits (B, classes), float32 on ``x``'s device."""
        if self._session is None:
            self._session = ort_session(self.path, self.threads)
        feed = x.detach().to("cpu", torch.float32).numpy()
        (out,) = self._session.run([OUTPUT_NAME], {INPUT_NAME: feed})
        return torch.from_numpy(out).float().to(x.device)


def simplify_onnx(path: Path) -> None:
    """Simplify the ONNX file at ``path`` in place with onnxslim (``uvc[simplify]``)."""
    try:
        import onnxslim
    except ImportError:
        raise ExportError("--simplify needs onnxslim: pip install 'uvc[simplify]'") from None
    try:
        onnxslim.slim(str(path), str(path))
    except Exception as exc:  # onnxslim raises many types
        raise ExportError(f"onnxslim failed on {path.name}: {exc}") from exc
