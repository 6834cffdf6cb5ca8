"""Fuzz: damaged checkpoints, spec JSONs, latency tables and run configs never give a traceback.

Real files (a uvc checkpoint, a spec, a latency table, a run's config.json) are damaged in four
ways: random bytes, truncation, bit flips, and (for JSON) a value swapped for one of another type
or range. Each is fed to every command that reads such a file. A command may accept an input that
is still valid (exit 0); otherwise it must exit 2 with exactly one ``error:`` line and no
traceback. The seed is fixed, so a failure names a reproducible case.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from tests.helpers import tiny_spec
from uvc.arch.demo import demo_spec
from uvc.arch.model import ViT
from uvc.cli import cli
from uvc.files.checkpoint import Checkpoint, save_checkpoint
from uvc.files.rundir import write_marker
from uvc.pipeline import TrainConfig

SEED = 20260901
# Per kind of file: how many damaged versions (kept modest so the file runs in a few seconds).
N_CKPT, N_JSON = 48, 64
TRIED: dict[str, int] = {}

# What a still-valid input may print on success, per command; anything else must be a refusal.
SWAP_VALUES: list[Any] = [None, -1, 0, 1e308, -1e-9, "x", "", [], {}, True, 2**70, 3.5]


def _mutations(data: bytes, n: int, rng: random.Random, is_json: bool) -> list[bytes]:
    out: list[bytes] = [b"", b"\x00", b"\xff" * 7, b"null", b"[]", b"{}"]
    while len(out) < n:
        kind = rng.randrange(4 if is_json else 3)
        if kind == 0:
            out.append(rng.randbytes(rng.randrange(1, 300)))
        elif kind == 1:
            out.append(data[: rng.randrange(0, len(data))])
        elif kind == 2:
            b = bytearray(data)
            for _ in range(rng.randrange(1, 9)):
                i = rng.randrange(len(b))
                b[i] ^= 1 << rng.randrange(8)
            out.append(bytes(b))
        else:
            out.append(_swap_value(json.loads(data), rng))
    return out


def _swap_value(obj: Any, rng: random.Random) -> bytes:
    """Replace one value anywhere in a JSON document by a value of another type or range."""
    paths: list[tuple[Any, Any]] = []

    def walk(node: Any) -> None:
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for k, v in items:
            paths.append((node, k))
            if isinstance(v, dict | list):
                walk(v)

    walk(obj)
    node, key = rng.choice(paths)
    node[key] = rng.choice(SWAP_VALUES)
    return json.dumps(obj).encode()


def _check(res: Any, case: str) -> None:
    assert res.exit_code in (0, 2), f"{case}: exit {res.exit_code}\n{res.output}"
    assert "Traceback" not in res.output, f"{case}:\n{res.output}"
    if res.exception is not None:
        assert isinstance(res.exception, SystemExit), f"{case}: {res.exception!r}"
    if res.exit_code == 2:
        lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
        assert len(lines) == 1 and lines[0].startswith("error: "), f"{case}:\n{res.stderr}"


@pytest.fixture
def no_training(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stop ``uvc train`` after every file has been read and checked (before any compute)."""
    import uvc.pipeline.stages as stages

    def stop(cfg: TrainConfig) -> Any:
        raise stages.UvcError("fuzz: the run would start here")

    monkeypatch.setattr(stages, "run_stages", stop)


def _run_all(
    tmp_path: Path, name: str, data: bytes, n: int, is_json: bool, commands: list[Callable]
) -> None:
    rng = random.Random(f"{SEED}-{name}")
    inputs = _mutations(data, n, rng, is_json)
    runner = CliRunner()
    for i, blob in enumerate(inputs):
        folder = tmp_path / f"{name}{i}"
        folder.mkdir()
        for make_args in commands:
            args = make_args(folder, blob)
            res = runner.invoke(cli, args)
            _check(res, f"{name} #{i} ({' '.join(args[:2])})")
    TRIED[name] = len(inputs)


def test_damaged_checkpoints(tmp_path: Path, no_training: None) -> None:
    good = tmp_path / "good.pt"
    model = ViT(tiny_spec())
    save_checkpoint(good, Checkpoint(model.spec, model.state_dict(), {"kind": "final"}))

    def put(folder: Path, blob: bytes) -> Path:
        (folder / "m.pt").write_bytes(blob)
        return folder / "m.pt"

    commands = [
        lambda f, b: ["inspect", str(put(f, b))],
        lambda f, b: ["export", str(put(f, b)), "--out", str(f / "exp"), "--no-onnx"],
        lambda f, b: ["train", "--model", str(put(f, b)), "--out", str(f / "run")],
    ]
    _run_all(tmp_path, "ckpt", good.read_bytes(), N_CKPT, False, commands)


def test_damaged_spec_json(tmp_path: Path, no_training: None) -> None:
    def put(folder: Path, blob: bytes) -> Path:
        (folder / "spec.json").write_bytes(blob)
        return folder / "spec.json"

    commands = [
        lambda f, b: ["inspect", str(put(f, b))],
        lambda f, b: ["train", "--model", str(put(f, b)), "--out", str(f / "run")],
    ]
    _run_all(tmp_path, "spec", tiny_spec().to_json().encode(), N_JSON, True, commands)


def _lut_json() -> bytes:
    spec = demo_spec()
    return json.dumps(
        {
            "format": "uvc-latency-lut",
            "version": 1,
            "unit": "ms",
            "device": "cpu",
            "backend": "eager",
            "batch": 1,
            "embed_dim": spec.embed_dim,
            "tokens": spec.num_tokens,
            "fixed_ms": 0.05,
            "attn": {
                "heads": [1, 2, 4],
                "qk_dim": [8, 16],
                "v_dim": [8, 16],
                "ms": [[[0.1, 0.12], [0.13, 0.15]]] * 3,
            },
            "mlp": {"mlp_dim": [16, 128, 256], "ms": [0.05, 0.1, 0.2]},
        }
    ).encode()


def test_damaged_latency_tables(tmp_path: Path, no_training: None) -> None:
    def put(folder: Path, blob: bytes) -> Path:
        (folder / "lut.json").write_bytes(blob)
        return folder / "lut.json"

    commands = [
        lambda f, b: [
            "train",
            "--metric",
            "latency",
            "--lut",
            str(put(f, b)),
            "--out",
            str(f / "run"),
        ],
    ]
    _run_all(tmp_path, "lut", _lut_json(), N_JSON, True, commands)


def test_damaged_run_configs(tmp_path: Path, no_training: None) -> None:
    good = json.dumps(TrainConfig(out="x").to_dict()).encode()

    def put(folder: Path, blob: bytes) -> Path:
        run = folder / "run"
        run.mkdir(exist_ok=True)
        write_marker(run, "train")
        (run / "config.json").write_bytes(blob)
        return run

    commands = [lambda f, b: ["train", "--resume", str(put(f, b))]]
    _run_all(tmp_path, "config", good, N_JSON, True, commands)


def test_report_fuzz_counts() -> None:
    """Not a check: prints how many damaged inputs the tests above fed (run with -s to see)."""
    print(f"fuzz inputs per kind: {TRIED}")
