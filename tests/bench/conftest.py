"""Shared fixtures of the benchmark tests: a tiny model, a compressed copy, their ONNX files."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import torch
from uvc.bench.harness import BenchModel
from uvc.bench.timer import TimingConfig

from tests.helpers import tiny_spec
from uvc.arch.keep import random_keep
from uvc.arch.model import ViT

# The smallest timing that still exercises warmup, rounds and repetitions.
FAST = TimingConfig(warmup=1, rounds=2, reps=2, warmup_per_round=0)


@pytest.fixture(scope="session")
def tiny_model() -> ViT:
    torch.manual_seed(0)
    return ViT(tiny_spec()).eval()


@pytest.fixture(scope="session")
def half_model(tiny_model: ViT) -> ViT:
    from uvc.export.materialize import materialize

    return materialize(tiny_model, random_keep(tiny_model.spec, 0.5, seed=1)).eval()


@pytest.fixture(scope="session")
def tiny_onnx(tiny_model: ViT, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from uvc.export.onnx import export_onnx

    logging.getLogger("onnx_ir").setLevel(logging.WARNING)
    return export_onnx(tiny_model, tmp_path_factory.mktemp("onnx") / "tiny.onnx")


@pytest.fixture
def bench_models(tiny_model: ViT, half_model: ViT, tiny_onnx: Path) -> list[BenchModel]:
    return [BenchModel("dense", tiny_model, onnx=tiny_onnx), BenchModel("half", half_model)]
