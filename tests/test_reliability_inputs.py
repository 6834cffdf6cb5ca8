"""Bad input is refused up front: exit 2, one ``error:`` line, no traceback, nothing written.

Every case of issue 9's sections 2-6 (and more) is one row. Each runs in an empty working folder
that holds only the files the case prepares; afterwards every file there must be byte-identical
and nothing may have been added (a refused run leaves nothing behind).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from uvc.arch.demo import demo_spec
from uvc.cli import cli
from uvc.pipeline.preflight import budget_floor

NO_GPU = not torch.cuda.is_available()


def _snapshot(root: Path) -> dict[str, str]:
    """Path -> sha256 (folders: "dir") of everything under ``root``."""
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = "dir" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _prepare(root: Path) -> None:
    """The files the cases refer to (all relative to the working folder)."""
    (root / "afile").write_text("a user's file\n")
    (root / "notes.txt").write_text("not a checkpoint\n")
    (root / "bad.json").write_text("{ not json")
    (root / "tiny.json").write_text(demo_spec().to_json())
    lut = {
        "format": "uvc-latency-lut", "version": 1, "unit": "ms", "device": "cpu",
        "backend": "eager", "batch": 1, "embed_dim": 192, "tokens": 197, "fixed_ms": 0.1,
        "attn": {"heads": [1, 3], "qk_dim": [8, 64], "v_dim": [8, 64],
                 "ms": [[[1, 1], [1, 1]]] * 2},
        "mlp": {"mlp_dim": [16, 768], "ms": [1, 2]},
    }  # fmt: skip
    (root / "other_lut.json").write_text(json.dumps(lut))
    (root / "empty_data").mkdir()
    (root / "text_data" / "cat").mkdir(parents=True)
    (root / "text_data" / "cat" / "a.jpg").write_text("this is no image")
    (root / "no_model").mkdir()
    (root / "no_model" / "readme.md").write_text("hello")
    from uvc.files.rundir import write_marker
    from uvc.pipeline import TrainConfig

    (root / "a_run").mkdir()
    write_marker(root / "a_run", "train")
    (root / "a_run" / "config.json").write_text(json.dumps(TrainConfig(out="a_run").to_dict()))


CASES = [
    # section 3: no traceback
    ("train out under a file", ["train", "--out", "afile/sub"], "afile is a file"),
    ("train out is a file", ["train", "--out", "afile"], "is a file, not a folder"),
    ("train out unwritable", ["train", "--out", "/proc/uvc_run"], "/proc/uvc_run"),
    ("val-split 1.5", ["train", "--val-split", "1.5"], "val_split must be in [0, 1)"),
    ("workers -2", ["train", "--workers", "-2"], "'--workers'"),
    ("mixup -1", ["train", "--mixup", "-1"], "mixup and cutmix must be >= 0"),
    ("cutmix -1", ["train", "--cutmix", "-0.5"], "mixup and cutmix must be >= 0"),
    ("demo threads -1", ["demo", "--threads", "-1"], "'--threads'"),
    ("demo device tpu", ["demo", "--device", "tpu"], "'--device'"),
    ("train device tpu", ["train", "--device", "tpu"], "'--device'"),
    ("demo out unwritable", ["demo", "--out", "/proc/uvc_demo"], "/proc/uvc_demo"),
    ("demo out is a file", ["demo", "--out", "afile"], "is a file, not a folder"),
    # section 2: validated before compute
    ("search = warmup = 0", ["train", "--search-epochs", "0", "--warmup-epochs", "0"],
     "must exceed warmup_epochs"),
    ("search = warmup", ["train", "--search-epochs", "2", "--warmup-epochs", "2"],
     "must exceed warmup_epochs"),
    ("tau 0", ["train", "--tau", "0"], "tau (the distillation temperature) must be > 0"),
    ("tau nan", ["train", "--tau", "nan"], "tau must be a finite number"),
    ("label smoothing 1", ["train", "--label-smoothing", "1"], "label_smoothing must be in [0, 1)"),
    ("alpha 1.5", ["train", "--alpha", "1.5"], "alpha must be in [0, 1]"),
    ("alpha -0.1", ["train", "--alpha", "-0.1"], "alpha must be in [0, 1]"),
    ("lut unreadable", ["train", "--metric", "latency", "--lut", "bad.json"],
     "latency table bad.json is not a JSON file"),
    ("lut missing", ["train", "--metric", "latency", "--lut", "nope.json"], "file not found"),
    ("lut of another model", ["train", "--metric", "latency", "--lut", "other_lut.json"],
     "latency table is for embed_dim=192"),
    ("data folder empty", ["train", "--data", "empty_data", "--val-split", "0.1"],
     "has no class sub-folders"),
    ("data not images", ["train", "--data", "text_data", "--val-split", "0.1"],
     "cannot read image"),
    ("weights missing", ["train", "--weights", "nope.pt"], "--weights nope.pt: file not found"),
    ("data is a file", ["train", "--data", "afile"], "is a file; give a folder"),
    ("img-size absurd", ["train", "--img-size", "100000"], "GiB of"),
    ("batch-size absurd", ["train", "--batch-size", "100000000"], "GiB of"),
    ("teacher without weights", ["train", "--teacher", "resnet18"], "go together"),
    # section 4: honest results, no silently ignored options
    ("budget unreachable", ["train", "--budget", "0.0001"], "cannot be reached"),
    ("lut without latency metric", ["train", "--lut", "other_lut.json"],
     "only used by --metric latency"),
    ("val-split with digits", ["train", "--val-split", "0.2"], "drop --val-split"),
    ("alpha with kd none", ["train", "--kd", "none", "--alpha", "0.3"], "--kd none turns off"),
    ("lut sizes with model", ["lut", "--model", "uvc-tiny", "--embed-dim", "64", "--out", "l.json"],
     "come from --model's spec"),
    ("bench unlike models", ["bench", "tiny.json", "--baseline", "deit_tiny_patch16_224"],
     "--allow-mismatch"),
    # section 5: bounded work, output checked first
    ("bench json unwritable", ["bench", "tiny.json", "--json", "/proc/b.json"],
     "--json /proc/b.json"),
    ("bench json in a file", ["bench", "tiny.json", "--json", "afile/b.json"], "afile is a file"),
    ("bench batch 1e8", ["bench", "tiny.json", "--batch-sizes", "100000000"], "GiB"),
    ("lut out unwritable", ["lut", "--model", "uvc-tiny", "--out", "/proc/l.json"], "/proc/l.json"),
    ("lut embed 100000", ["lut", "--embed-dim", "100000", "--tokens", "197", "--out", "l.json"],
     "GiB"),
    ("lut batch 1e8", ["lut", "--model", "uvc-tiny", "--batch", "100000000", "--out", "l.json"],
     "GiB"),
    ("lut tokens 1000001", ["lut", "--embed-dim", "64", "--tokens", "1000001", "--out", "l.json"],
     "GiB"),
    ("lut check-specs 1e6", ["lut", "--model", "uvc-tiny", "--check-specs", "1000000", "--out",
     "l.json"], "too many"),
    # section 6: consistency
    ("text file as checkpoint", ["inspect", "notes.txt"], "not a PyTorch checkpoint"),
    ("text file as train model", ["train", "--model", "notes.txt"], "not a PyTorch checkpoint"),
    ("folder that is no export", ["inspect", "no_model"], "not a uvc export"),
    ("export of a text file", ["export", "notes.txt", "--out", "exp"], "not a PyTorch checkpoint"),
    ("resume of a user folder", ["train", "--resume", "no_model"], "holds no uvc run"),
    ("resume with other options", ["train", "--resume", "a_run", "--budget", "0.3"],
     "drop --budget"),
]  # fmt: skip
if NO_GPU:
    CASES += [
        ("device cuda without GPU", ["train", "--device", "cuda"], "no CUDA GPU"),
        ("amp without GPU", ["train", "--amp", "bf16"], "needs a CUDA GPU"),
        ("bench cuda without GPU", ["bench", "tiny.json", "--device", "cuda"], "no CUDA GPU"),
    ]


@pytest.mark.parametrize(("case", "args", "message"), CASES, ids=[c[0] for c in CASES])
def test_refused_in_one_line_touching_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, case: str, args: list[str], message: str
) -> None:
    monkeypatch.chdir(tmp_path)
    _prepare(tmp_path)
    before = _snapshot(tmp_path)
    res = CliRunner().invoke(cli, args)
    assert res.exit_code == 2, f"{case}: {res.output}"
    assert "Traceback" not in res.output
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), res.stderr
    assert message in lines[0], lines[0]
    assert _snapshot(tmp_path) == before, "a refused command changed the working folder"


def test_budget_floor_is_the_smallest_model_and_reachable() -> None:
    """The floor is the cost of 1 head, 1 qk/v dim and 1 MLP unit per block (uvc-tiny: 0.0735,
    the ratio the old code silently ended at for --budget 0.0001)."""
    from uvc.arch.cost import macs
    from uvc.arch.spec import BlockSpec

    spec = demo_spec()
    floor = budget_floor(spec, "macs")
    smallest = spec.replace(blocks=(BlockSpec(1, 1, 1, 1),) * spec.depth)
    assert floor.ratio == pytest.approx(macs(smallest) / macs(spec), rel=1e-12)
    assert 0.07 < floor.ratio < 0.08
    assert floor.fixed_ratio < floor.ratio
    aligned = budget_floor(spec, "macs", align=8)
    assert aligned.ratio > floor.ratio  # kept widths are multiples of 8


def test_budget_message_names_a_budget_that_is_accepted(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["train", "--budget", "0.0001", "--out", str(tmp_path / "o")])
    suggested = res.stderr.split("pass --budget ")[1].split()[0]
    assert float(suggested) >= budget_floor(demo_spec(), "macs").ratio


def test_device_is_one_choice_list_with_one_default() -> None:
    for cmd in ("train", "demo", "bench", "lut"):
        out = CliRunner().invoke(cli, [cmd, "--help"]).output
        assert "[auto|cpu|cuda|cuda:N]" in out and "[default: auto]" in out, cmd
    assert "--threads" in CliRunner().invoke(cli, ["train", "--help"]).output


def test_export_opt_batch_help_says_default_like_the_others() -> None:
    out = CliRunner().invoke(cli, ["export", "--help"]).output
    assert "[default: 8" in out and "[8]" not in out


def test_inspect_accepts_builtin_model_and_export_folders(tmp_path: Path) -> None:
    res = CliRunner().invoke(cli, ["inspect", "uvc-tiny", "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["embed_dim"] == 64
    folder = tmp_path / "exp"
    res = CliRunner().invoke(cli, ["export", "uvc-tiny", "--out", str(folder), "--no-onnx"])
    assert res.exit_code == 0, res.output
    res = CliRunner().invoke(cli, ["inspect", str(folder), "--json"])
    assert res.exit_code == 0, res.output
    assert json.loads(res.output)["spec"] == demo_spec().to_dict()


def test_bench_with_every_row_failed_exits_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """When nothing was measured, bench fails (it exited 0 with every row 'failed')."""
    import uvc.bench.harness as harness
    from uvc.bench.report import BenchResult, Row

    def all_failed(*args: object, **kwargs: object) -> BenchResult:
        row = Row("m", "eager", 1, "failed: RuntimeError: out of memory", 1, 1)
        return BenchResult({}, [], "m", [row])

    monkeypatch.setattr(harness, "bench_targets", all_failed)
    spec = tmp_path / "tiny.json"
    spec.write_text(demo_spec().to_json())
    res = CliRunner().invoke(cli, ["bench", str(spec), "--backends", "eager"])
    assert res.exit_code == 1, res.output
    assert "nothing was measured" in res.stderr


def test_bench_unlike_models_with_the_flag_warns_loudly(caplog: pytest.LogCaptureFixture) -> None:
    from uvc.cli.checks import check_comparable
    from uvc.files.weights import spec_from_timm

    named = [("deit", spec_from_timm("deit_tiny_patch16_224")), ("tiny", demo_spec())]
    with caplog.at_level("WARNING"):
        check_comparable(named, allow=True)
    assert "!!!" in caplog.text and "32px vs 224px" in caplog.text


def test_budget_not_met_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    from uvc.cli.train import check_budget_met

    meta = {"metric": "macs", "budget": 0.05, "macs_before": 1000, "macs_after": 735}
    with pytest.raises(SystemExit) as exc:
        check_budget_met(meta)
    assert exc.value.code == 1 and "keeps 0.7350 of the macs" in capsys.readouterr().err
    check_budget_met({**meta, "macs_after": 50})  # met: returns


def test_lut_shows_progress_and_export_reads_export_folders(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("INFO"):
        res = CliRunner().invoke(
            cli, ["lut", "--model", "uvc-tiny", "--out", str(tmp_path / "l.json"), "--threads", "1"]
        )
    assert res.exit_code == 0, res.output
    assert "timing round 1/" in caplog.text
    first, second = tmp_path / "e1", tmp_path / "e2"
    for src, dst in (("uvc-tiny", first), (str(first), second)):
        res = CliRunner().invoke(cli, ["export", src, "--out", str(dst), "--no-onnx"])
        assert res.exit_code == 0, res.output
    assert (first / "spec.json").read_text() == (second / "spec.json").read_text()


def test_budget_floor_follows_the_method(tmp_path: Path) -> None:
    """uniform keeps full-width heads (a higher floor, the one its own code refuses below);
    nvit can also narrow the embedding (a lower one)."""
    from uvc.errors import UvcError
    from uvc.methods.common.resource import ResourceModel
    from uvc.methods.uniform import uniform_ratio

    spec = demo_spec()
    uvc_floor = budget_floor(spec, "macs").ratio
    uniform = budget_floor(spec, "macs", method="uniform").ratio
    nvit = budget_floor(spec, "macs", method="nvit").ratio
    assert nvit < uvc_floor < uniform
    res = ResourceModel(spec, "macs")
    uniform_ratio(res, uniform * 1.0001)  # reachable
    with pytest.raises(UvcError):
        uniform_ratio(res, uniform * 0.999)
    args = ["train", "--method", "uniform", "--budget", "0.1", "--out", str(tmp_path / "o")]
    out = CliRunner().invoke(cli, args)
    assert out.exit_code == 2 and "--method uniform" in out.stderr
