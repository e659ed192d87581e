"""Concepts: parsing, YAML, and top-1/top-k counting with summed scores (hand-computed)."""

from __future__ import annotations

import numpy as np
import pytest

from biasscope.audit import NONE_LABEL, LabelSpace, load_concepts, parse_concept
from biasscope.errors import BiasscopeError, ManifestError
from tests.audit.synth import make_adapter


def test_parse_and_load_concepts(tmp_path) -> None:
    assert parse_concept("doctor = stethoscope, lab coat") == ("doctor", ["stethoscope", "lab coat"])
    with pytest.raises(BiasscopeError, match="expected NAME = class"):
        parse_concept("doctor stethoscope")
    (tmp_path / "c.yaml").write_text("concepts:\n  doctor: [stethoscope, lab coat]\n  nurse: 'scrubs'\n")
    assert load_concepts(tmp_path / "c.yaml") == {"doctor": ["stethoscope", "lab coat"], "nurse": ["scrubs"]}
    assert load_concepts(["a = x, y", "b=z"]) == {"a": ["x", "y"], "b": ["z"]}
    (tmp_path / "bad.yaml").write_text("- just a list\n")
    with pytest.raises(BiasscopeError, match="expected a mapping"):
        load_concepts(tmp_path / "bad.yaml")


def test_label_space_counts_top1_topk_and_sums_scores() -> None:
    adapter = make_adapter(0.0)  # classes: stethoscope, lab coat, scrubs, background
    concepts = {"doctor": ["stethoscope", "lab coat"], "nurse": ["scrubs"]}
    probs = np.array([
        [0.30, 0.25, 0.40, 0.05],  # top-1 scrubs, but doctor's summed score 0.55 > 0.40
        [0.10, 0.05, 0.15, 0.70],  # top-1 background: counts for no label with top1
        [0.60, 0.10, 0.20, 0.10],
    ])
    space = LabelSpace.build(adapter, ["doctor", "nurse", "background"], concepts, top_k=2, match="top1")
    ev = space.evaluate(probs)
    assert ev[0]["scores"] == pytest.approx({"doctor": 0.55, "nurse": 0.40, "background": 0.05})
    assert ev[0]["hit_top1"] == {"doctor": False, "nurse": True, "background": False}
    assert ev[0]["top"] == [2, 0]  # top-2: scrubs, stethoscope
    assert ev[0]["hit_topk"] == {"doctor": True, "nurse": True, "background": False}
    assert ev[0]["pred_label"] == "nurse"
    assert ev[1]["pred_label"] == "background"  # "background" is a plain model-class label
    # top-k counting: image 1 has top-2 = background, scrubs -> counts for nurse and background
    spk = LabelSpace.build(adapter, ["doctor", "nurse"], concepts, top_k=2, match="topk")
    evk = spk.evaluate(probs)
    assert evk[0]["predicted"] == {"doctor": True, "nurse": True}
    assert evk[0]["pred_label"] == "doctor"  # both count; doctor has the higher summed score
    assert evk[1]["predicted"] == {"doctor": False, "nurse": True} and evk[1]["pred_label"] == "nurse"
    sp1 = LabelSpace.build(adapter, ["doctor", "nurse"], concepts, top_k=2, match="top1")
    assert sp1.evaluate(probs)[1]["pred_label"] == NONE_LABEL
    assert evk[2]["top_probs"] == pytest.approx([0.60, 0.20])


def test_unknown_labels_listed_together() -> None:
    adapter = make_adapter(0.0)
    with pytest.raises(ManifestError) as ei:
        LabelSpace.build(adapter, ["doctor", "pilot", "nurse"], {"nurse": ["scrubs", "cap"]})
    probs = ei.value.problems
    assert any(p.startswith("label 'doctor'") for p in probs)
    assert any(p.startswith("label 'pilot'") for p in probs)
    assert any(p.startswith("concept 'nurse'") and "'cap'" in p for p in probs)
    assert any("define labels that are not model classes as concepts" in p for p in probs)
