"""The two-stage pipeline end to end on a tiny config, and its configuration rules."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from uvc.arch.spec import ViTSpec
from uvc.errors import UvcError
from uvc.files.checkpoint import load_checkpoint
from uvc.pipeline import TrainConfig, clear_run, train
from uvc.train.runlog import read_log
from uvc.train.teacher import load_base_model

ROOT = Path(__file__).resolve().parents[1]


def tiny_spec_file(folder: Path) -> Path:
    """A 2-block, embed-32, 16 px ViT as a spec JSON (the pipeline's --model)."""
    spec = ViTSpec.uniform(2, 32, 2, 2.0, img_size=16, patch_size=4, num_classes=10)
    return spec.save(folder / "tiny.json")


def tiny_config(out: Path, model: Path, **kw: object) -> TrainConfig:
    base: dict[str, object] = {
        "out": str(out),
        "model": str(model),
        "data": "digits",
        "teacher_epochs": 2,
        "search_epochs": 2,
        "warmup_epochs": 1,
        "finetune_epochs": 1,
        "batch_size": 128,
        "lr": 3e-3,
        "device": "cpu",
        "progress": False,
    }
    base.update(kw)
    return TrainConfig(**base)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[TrainConfig, object]:
    folder = tmp_path_factory.mktemp("run")
    torch.manual_seed(0)
    cfg = tiny_config(folder / "out", tiny_spec_file(folder))
    return cfg, train(cfg)


def test_outputs_exist_and_budget_is_met(tiny_run: tuple) -> None:
    cfg, res = tiny_run
    out = Path(cfg.out)
    for name in ("config.json", "teacher.pt", "search.pt", "spec.json", "finetune.pt",
                 "final.pt", "log.jsonl", "architecture.png", "summary.txt"):  # fmt: skip
        assert (out / name).is_file(), name
    assert (out / "architecture.png").read_bytes()[:4] == b"\x89PNG"
    assert res.macs_after <= cfg.budget * res.macs_before * 1.01
    assert res.params_after < res.params_before
    ckpt = load_checkpoint(out / "final.pt")
    assert ckpt.spec == ViTSpec.load(out / "spec.json") == res.model.spec
    meta = ckpt.meta
    assert meta["accuracy"] == res.accuracy and meta["teacher_acc"] == res.teacher_acc
    assert meta["macs_before"] == res.macs_before and meta["macs_after"] == res.macs_after
    assert "compressed" in res.summary and "uncompressed" in res.summary
    assert (out / "summary.txt").read_text().strip() == res.summary.strip()
    assert json.loads((out / "config.json").read_text())["budget"] == cfg.budget


def test_run_log_covers_every_stage(tiny_run: tuple) -> None:
    cfg, _ = tiny_run
    records = read_log(Path(cfg.out) / "log.jsonl")
    stages = {r.get("stage") for r in records}
    assert {"teacher", "search", "finetune", "final"} <= stages
    search = [r for r in records if r.get("stage") == "search" and "R" in r]
    assert search and all("z" in r for r in search)
    epochs = [r for r in records if r.get("event") == "epoch_end"]
    assert all("acc" in r and "lr" in r and "loss" in r for r in epochs)


def test_final_checkpoint_reproduces_its_accuracy_in_a_fresh_process(tiny_run: tuple) -> None:
    cfg, res = tiny_run
    code = f"from uvc import pipeline; print(pipeline.evaluate_final({cfg.out!r}))"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}  # no spin-waiting threads on a busy machine
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert float(proc.stdout.strip().splitlines()[-1]) == pytest.approx(res.accuracy, abs=1e-9)


def test_same_settings_continue_other_settings_are_refused(tiny_run: tuple) -> None:
    cfg, res = tiny_run
    again = train(cfg)  # every stage is complete: nothing is trained again
    assert again.accuracy == res.accuracy and again.model.spec == res.model.spec
    for a, b in zip(again.model.state_dict().values(), res.model.state_dict().values(),
                    strict=True):  # fmt: skip
        assert torch.equal(a, b)
    other = TrainConfig(**{**cfg.to_dict(), "budget": 0.3})
    with pytest.raises(UvcError, match="budget"):
        train(other)
    resumed = train(resume=cfg.out)
    assert resumed.accuracy == res.accuracy


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"budget": 0.0}, "budget"),
        ({"metric": "watts"}, "metric"),
        ({"metric": "latency"}, "lut"),
        ({"teacher": "resnet18"}, "teacher-weights"),
        ({"kd": "medium"}, "kd"),
        ({"warmup_epochs": 5, "search_epochs": 2}, "warmup"),
        ({"amp": "fp8"}, "amp"),
    ],
)
def test_config_validation(kw: dict, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        TrainConfig(**kw)


def test_resume_needs_a_run_folder(tmp_path: Path) -> None:
    with pytest.raises(UvcError, match=r"holds no uvc run to resume"):
        train(resume=tmp_path)


def test_clear_run_removes_only_run_files(tmp_path: Path) -> None:
    from uvc.files.rundir import MARKER, RunDirError, write_marker

    for name in ("final.pt", "log.jsonl", "mine.txt"):
        (tmp_path / name).write_text("x")
    with pytest.raises(RunDirError):  # not a folder uvc created: nothing is deleted
        clear_run(tmp_path)
    assert len(list(tmp_path.iterdir())) == 3
    write_marker(tmp_path, "train")
    clear_run(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [MARKER, "mine.txt"]


def test_base_model_gets_a_head_for_the_dataset(tmp_path: Path) -> None:
    model, trained = load_base_model(str(tiny_spec_file(tmp_path)), None, 3)
    assert model.spec.num_classes == 3 and not trained
    model, trained = load_base_model("uvc-tiny", None, 10, img_size=16)
    assert model.spec.img_size == 16 and model.spec.patch_size == 4 and not trained
    weights = tmp_path / "w.pt"
    torch.save(model.state_dict(), weights)
    again, trained = load_base_model("uvc-tiny", str(weights), 10, img_size=16)
    assert trained and torch.equal(again.head.weight, model.head.weight)
    body, trained = load_base_model("uvc-tiny", str(weights), 4, img_size=16)
    assert not trained and body.spec.num_classes == 4
    assert torch.equal(body.blocks[0].mlp.fc1.weight, model.blocks[0].mlp.fc1.weight)
