"""The generative-augmentation hook with a trivial generator: marked rows, train-only, never evaluated."""

from __future__ import annotations

import csv
import json
import textwrap

import numpy as np
import pytest
from click.testing import CliRunner

from biasscope.audit import load_manifest
from biasscope.cli import main
from biasscope.errors import BiasscopeError
from biasscope.training import ImageGenerator, TrainConfig, add_synthetic_images, compare_models, train

from .synth import make_image


class TintGenerator:
    """Draws images like the synthetic data set's (a trivial stand-in for a diffusion model)."""

    def __init__(self) -> None:
        self.calls: list[dict] = []

    def __call__(self, *, group: str, label: str, n: int, seed: int) -> list[np.ndarray]:
        self.calls.append({"group": group, "label": label, "n": n, "seed": seed})
        rng = np.random.default_rng(seed)
        return [make_image(label, group, rng) for _ in range(n)]


def test_synthetic_rows_are_marked_trained_on_and_excluded_from_evaluation(tiny_set, tmp_path):
    gen = TintGenerator()
    assert isinstance(gen, ImageGenerator)
    aug = add_synthetic_images(tiny_set, gen, {"b": 3}, tmp_path / "aug", group="group", seed=10)
    assert gen.calls == [{"group": "b", "label": "green", "n": 3, "seed": 10},
                         {"group": "b", "label": "red", "n": 3, "seed": 11}]
    synth = [r for r in aug.rows if r.attributes["synthetic"] == "1"]
    assert len(aug.rows) == 46 and len(synth) == 6
    assert all(r.attributes["group"] == "b" and r.file.is_file() for r in synth)
    assert {r.label for r in synth} == {"green", "red"}
    again = load_manifest(tmp_path / "aug" / "manifest_augmented.csv", groups=["group"], root=aug.root)
    assert [r.file for r in again.rows] == [r.file for r in aug.rows]

    res = train(aug, tmp_path / "m", TrainConfig(input_size=32, epochs=1, freeze_backbone=True, seed=0),
                show_progress=False, plots=False)
    split = list(csv.DictReader((res.out_dir / "split.csv").read_text().splitlines()))
    assert {row["split"] for row in split if row["synthetic"] == "1"} == {"train"}
    assert res.n_val == 8 and res.n_train == 38  # the 40 real images split as without synthetic ones

    out = compare_models(aug, [res.checkpoint, res.checkpoint], tmp_path / "cmp", group="group",
                         names=["same1", "same2"], n_boot=100, n_perm=100)
    assert out["n_synthetic_excluded"] == 6 and out["n_images"] == 40
    assert out["changes"]["same2"]["gap_change"]["change"] == 0.0
    assert out["changes"]["same2"]["gap_change"]["ci"] == [0.0, 0.0]
    assert out["changes"]["same2"]["gap_change"]["verdict"] == "no clear change"
    assert "6 synthetic image(s) in the manifest were excluded." in out["summary"]


def test_generator_errors(tiny_set, tmp_path):
    def short(*, group: str, label: str, n: int, seed: int) -> list:
        return []

    with pytest.raises(BiasscopeError, match="returned 0 image"):
        add_synthetic_images(tiny_set, short, {"b": 2}, tmp_path / "x", group="group")
    with pytest.raises(BiasscopeError, match="not in column 'group'"):
        add_synthetic_images(tiny_set, TintGenerator(), {"zz": 2}, tmp_path / "x", group="group")


def test_cli_generator_option(tiny_set, tmp_path, monkeypatch):
    mod = tmp_path / "pkg"
    mod.mkdir()
    (mod / "my_gen_mod.py").write_text(textwrap.dedent("""
        import numpy as np

        def generate(*, group, label, n, seed):
            return [np.full((32, 32, 3), 200 if label == "red" else 50, np.uint8) for _ in range(n)]
    """))
    monkeypatch.syspath_prepend(str(mod))
    out = tmp_path / "run"
    r = CliRunner().invoke(main, ["train", str(tiny_set), "--out", str(out), "--input-size", "32", "--epochs", "1",
                                  "--freeze-backbone", "--generator", "my_gen_mod:generate", "--synthesize", "a=2",
                                  "--no-plots", "--json"])
    assert r.exit_code == 0, r.output
    assert json.loads(r.output)["n_train"] == 32 + 4
    rows = list(csv.DictReader((out / "manifest_augmented.csv").read_text().splitlines()))
    assert sum(row["synthetic"] == "1" for row in rows) == 4
    r = CliRunner().invoke(main, ["train", str(tiny_set), "--out", str(out), "--synthesize", "a=2"])
    assert r.exit_code == 2 and "--generator" in r.output
