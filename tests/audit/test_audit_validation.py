"""Audits refused before the first image leave nothing behind; `audit` takes every model option.

Oracles: a counter on the runner's batch function (no image is processed before a refusal), the
run folder's absence, and a hand-computed forward pass (numpy normalisation with the --mean/--std
given on the command line, the --weights state dict loaded into the torchvision architecture).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch
import torchvision
from click.testing import CliRunner
from PIL import Image

from biasscope.audit import AuditConfig, ModelSource, RunStore, load_manifest, run_audit
from biasscope.audit import batch as batch_mod
from biasscope.audit.runner import check_stereotypical
from biasscope.cli import main
from biasscope.errors import BiasscopeError
from tests.audit.synth import CLASSES, SIZE, ColourNet, write_dataset

STATS = ["--n-boot", "100", "--n-perm", "100", "--min-group-size", "2"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("val")
    write_dataset(root, n_per_cell=3, seed=3)
    net = ColourNet(1.0).eval()
    torch.jit.trace(net, torch.zeros(1, 3, SIZE, SIZE)).save(str(root / "colour.pt"))
    (root / "classes.txt").write_text("\n".join(CLASSES) + "\n")
    return root


@pytest.fixture
def counted(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Images that reach the runner's batch function."""
    seen: list[int] = []
    real = batch_mod.score_batch

    def counting(adapter, space, cfg, batch):
        seen.extend(r.image_id for r in batch)
        return real(adapter, space, cfg, batch)

    monkeypatch.setattr(batch_mod, "score_batch", counting)
    return seen


def colour_args(data: Path) -> list[str]:
    return ["--model", str(data / "colour.pt"), "--labels", str(data / "classes.txt"), "--mean", "0,0,0",
            "--std", "1,1,1", "--concept", "doctor = stethoscope, lab coat", "--concept", "nurse = scrubs"]


def test_missing_weights_fail_before_any_image_and_leave_no_trace(data: Path, tmp_path: Path, counted,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(torch.hub, "get_dir", lambda: str(tmp_path / "empty-hub"))  # no cached weights
    out = tmp_path / "run"
    args = ["audit", str(data / "manifest.csv"), "--group", "gender", "--out", str(out), *STATS]
    # the first model is fine; the second one's weights are missing: nothing may run first
    res = CliRunner().invoke(main, [*args, *colour_args(data), "--model", "mobilenet_v2"])
    assert res.exit_code == 2, res.output
    assert "model mobilenet_v2:" in res.stderr and "weights" in res.stderr
    assert counted == [] and not out.exists()
    res = CliRunner().invoke(main, ["audits", str(tmp_path), "--json"])
    assert res.exit_code == 0 and json.loads(res.output) == []
    # a state dict that does not exist: the same, before the first image
    res = CliRunner().invoke(main, [*args, *colour_args(data), "--model", f"resnet18={tmp_path / 'nope.pth'}"])
    assert res.exit_code == 2 and "nope.pth" in res.stderr
    assert counted == [] and not out.exists()


def test_refused_run_leaves_no_trace_and_the_corrected_command_runs(data: Path, tmp_path: Path, counted) -> None:
    out = tmp_path / "run"
    args = ["audit", str(data / "manifest.csv"), "--group", "gender", "--out", str(out), *colour_args(data), *STATS]
    res = CliRunner().invoke(main, [*args, "--stereotypical", "doctor:male", "--stereotypical", "nurse:femal"])
    assert res.exit_code == 2
    assert "'nurse:femal': the manifest has no row with gender = 'femal'" in res.stderr
    assert counted == [] and not out.exists()
    # a method the model cannot run (TorchScript has no layer hooks) is refused before the first image too
    res = CliRunner().invoke(main, [*args, "--method", "gradcam"])
    assert res.exit_code == 2 and counted == [] and not out.exists()
    # and so are options the metrics would only trip on after every image
    res = CliRunner().invoke(main, [*args, "--exclude-flags", "blurry"])
    assert res.exit_code == 2 and "needs face data: run the audit with --face-parts" in res.stderr
    res = CliRunner().invoke(main, [*args, "--bias-group", "age"])
    assert res.exit_code == 2 and "bias group column 'age' is not in the manifest" in res.stderr
    assert counted == [] and not out.exists()
    res = CliRunner().invoke(main, [*args, "--stereotypical", "doctor:male", "--stereotypical", "nurse:female"])
    assert res.exit_code == 0, res.output
    assert sorted(counted) == list(range(12))
    (bs,) = [m["bias_score"] for m in json.loads((out / "metrics.json").read_text())["models"].values()]
    assert bs["n_stereotypical"] == 6 and bs["n_atypical"] == 6
    listed = json.loads(CliRunner().invoke(main, ["audits", str(tmp_path), "--json"]).output)
    assert [(r["name"], r["status"]) for r in listed] == [("run", "done")]


def test_out_folder_that_existed_is_kept_and_an_existing_audit_is_not_touched(data: Path, tmp_path: Path,
                                                                              counted) -> None:
    m = load_manifest(data / "manifest.csv", groups=["gender"])
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    with pytest.raises(BiasscopeError, match="no row with label 'surgeon'"):
        run_audit(m, [str(data / "colour.pt")], out, metrics_options={"stereotypical": ["surgeon:male"]})
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]
    assert counted == []


def test_stereotypical_cells_are_checked_against_the_rows(tmp_path: Path) -> None:
    for n in "abc":
        Image.new("RGB", (8, 8)).save(tmp_path / f"{n}.png")
    (tmp_path / "m.csv").write_text("path,label,gender,age\na.png,doctor,female,young\nb.png,doctor,male,old\n"
                                    "c.png,nurse,male,young\n")
    m = load_manifest(tmp_path / "m.csv", groups=["gender"])
    check_stereotypical(m, ["doctor:male", "nurse:male"], None, ["gender"])  # every cell has rows
    check_stereotypical(m, ["nurse:young"], "age", ["gender"])
    with pytest.raises(BiasscopeError) as e:
        check_stereotypical(m, ["nurse:female", "pilot:male", "doctor:other", "doctor"], None, ["gender"])
    msg = str(e.value)
    assert "'nurse:female': the manifest has no row with label 'nurse' and gender = 'female'" in msg
    assert "'pilot:male': the manifest has no row with label 'pilot' (labels: doctor, nurse)" in msg
    assert "'doctor:other': the manifest has no row with gender = 'other' (gender values: female, male)" in msg
    assert "'doctor': expected LABEL:GROUP" in msg
    with pytest.raises(BiasscopeError, match="bias group column 'race' is not in the manifest"):
        check_stereotypical(m, ["doctor:male"], "race", ["gender"])


def _squeezenet(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torchvision.models.squeezenet1_1(weights=None, num_classes=len(CLASSES)).eval()


def _by_hand(net: torch.nn.Module, path: Path, size: int, mean, std) -> np.ndarray:
    """Probabilities with a numpy normalisation: resize (bilinear), /255, (x - mean) / std."""
    img = Image.open(path).convert("RGB").resize((size, size), Image.Resampling.BILINEAR, reducing_gap=None)
    x = (np.asarray(img, dtype=np.float64) / 255.0 - np.array(mean)) / np.array(std)
    t = torch.from_numpy(x.transpose(2, 0, 1)[None].astype(np.float32))
    with torch.no_grad():
        return torch.softmax(net(t), dim=1)[0].double().numpy()


def test_weights_mean_std_input_size_reach_each_model(data: Path, tmp_path: Path) -> None:
    nets = {"a": _squeezenet(1), "b": _squeezenet(2)}
    for k, net in nets.items():
        torch.save(net.state_dict(), tmp_path / f"{k}.pth")
    means, stds = ["0.2,0.3,0.4", "0.6,0.5,0.1"], ["0.5,0.25,0.2", "0.3,0.3,0.6"]
    out = tmp_path / "run"
    base = ["audit", str(data / "manifest.csv"), "--group", "gender", "--out", str(out), *STATS,
            "--concept", "doctor = stethoscope, lab coat", "--concept", "nurse = scrubs", "--removal", "none",
            "--labels", str(data / "classes.txt"), "--input-size", "48"]
    two = ["--model", "squeezenet1_1", "--model", "squeezenet1_1", "--weights", str(tmp_path / "a.pth"),
           "--weights", str(tmp_path / "b.pth"), "--mean", means[0], "--mean", means[1], "--std", stds[0],
           "--std", stds[1]]
    # ambiguous counts are refused before anything is written
    res = CliRunner().invoke(main, [*base, *two, "--model", "squeezenet1_1"])
    assert res.exit_code == 2 and "given 2 times for 3 --model" in res.stderr and not out.exists()
    res = CliRunner().invoke(main, [*base, "--model", "squeezenet1_1", "--model", "resnet18", "--weights",
                                    str(tmp_path / "a.pth")])
    assert res.exit_code == 2 and "one state dict for 2 --model is ambiguous" in res.stderr and not out.exists()
    res = CliRunner().invoke(main, [*base, *two])
    assert res.exit_code == 0, res.output
    infos = {m["key"]: m["info"] for m in RunStore(out).models()}
    df = pd.read_csv(out / "per_image.csv")
    assert len(infos) == 2 and set(df["model"]) == set(infos)
    for key, k, mean, std in zip(infos, ("a", "b"), means, stds):
        mean_t, std_t = [float(v) for v in mean.split(",")], [float(v) for v in std.split(",")]
        info = infos[key]
        assert info["mean"] == pytest.approx(mean_t) and info["std"] == pytest.approx(std_t)
        assert info["input_size"] == 48 and info["name"] == f"squeezenet1_1:{k}.pth"
        rows = df[df["model"] == key]
        for path, label, p_true in zip(rows["path"], rows["label"], rows["p_true"]):
            p = _by_hand(nets[k], data / path, 48, mean_t, std_t)
            want = p[:2].sum() if label == "doctor" else p[2]
            assert p_true == pytest.approx(want, abs=1e-4)


def test_a_run_that_fails_before_its_first_image_is_stored_leaves_no_trace(data: Path, tmp_path: Path,
                                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """A failure inside the first batch (nothing stored) removes the store; after one stored batch the
    run stays, marked interrupted, and resumes."""
    m = load_manifest(data / "manifest.csv", groups=["gender"])
    real = batch_mod.score_batch
    calls = {"n": 0, "fail_at": 1}

    def flaky(adapter, space, cfg, batch):
        calls["n"] += 1
        if calls["n"] == calls["fail_at"]:
            raise RuntimeError("worker lost")
        return real(adapter, space, cfg, batch)

    monkeypatch.setattr(batch_mod, "score_batch", flaky)
    src = str(data / "colour.pt")
    concepts = {"doctor": ["stethoscope", "lab coat"], "nurse": ["scrubs"]}
    cfg = AuditConfig(groups=["gender"], concepts=concepts)
    model = ModelSource(src, key="colour", options={"labels": str(data / "classes.txt"), "mean": "0,0,0",
                                                    "std": "1,1,1"})
    out = tmp_path / "run"
    with pytest.raises(RuntimeError, match="worker lost"):
        run_audit(m, [model], out, cfg, batch_size=4)
    assert not out.exists()
    calls.update(n=0, fail_at=2)
    with pytest.raises(RuntimeError, match="worker lost"):
        run_audit(m, [model], out, cfg, batch_size=4)
    store = RunStore(out)
    assert store.get_meta("status") == "error" and store.counts() == {"colour": {"ok": 4, "error": 0}}
    calls.update(n=0, fail_at=-1)
    res = run_audit(m, [model], out, cfg, batch_size=4, finalize=False)
    assert res.counts == {"colour": {"ok": 12, "error": 0}} and store.get_meta("status") == "done"
