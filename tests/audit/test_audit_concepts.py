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


# ------------------------------------------------------------------ concepts as explanation targets
def _noise_image(seed: int = 0):
    from PIL import Image

    rng = np.random.default_rng(seed)
    arr = (rng.random((32, 32, 3)) * 255).astype("uint8")
    arr[18:28, 2:12] = (0, 0, 255)  # a blue tool: evidence for the doctor classes
    return Image.fromarray(arr)


def test_concept_target_sums_probabilities_and_logit_attributions() -> None:
    """A concept target's probability is its classes' summed probability; Integrated Gradients (linear in
    the explained output) of the concept equals the sum of IG of each class (sum of logits)."""
    from biasscope.api import explain
    from biasscope.audit.concepts import ConceptAdapter, concept_adapter
    from tests.audit.synth import make_adapter

    adapter = make_adapter(2.0)
    img = _noise_image()
    params = {"integrated_gradients": {"steps": 16}}
    exps = explain(adapter, img, ["integrated_gradients", "occlusion"], target="doctor", params=params,
                   concepts={"Doctor": ["stethoscope", "lab coat"]}, faithfulness=False)
    p = adapter.probabilities(adapter.preprocess(img))[0]
    ig = exps["integrated_gradients"]
    assert ig.target_name == "Doctor" and ig.target == adapter.num_classes
    assert ig.target_probability == pytest.approx(float(p[0] + p[1]), rel=1e-6)
    parts = [explain(adapter, img, ["integrated_gradients"], target=c, params=params,
                     faithfulness=False)["integrated_gradients"].heatmap for c in ("stethoscope", "lab coat")]
    scale = float(np.abs(parts[0]).max() + np.abs(parts[1]).max())
    np.testing.assert_allclose(ig.heatmap, parts[0] + parts[1], atol=1e-4 * scale)
    # completeness holds for the summed logit
    assert ig.checks["completeness_relative"] < 0.05
    ca = concept_adapter(adapter, "doctor", ["stethoscope", "lab coat"])
    assert isinstance(ca, ConceptAdapter) and "sum of their logits" in ca.describe()
    with pytest.raises(BiasscopeError, match=r"did you mean|unknown class"):
        concept_adapter(adapter, "doctor", ["stethoscop"])


def test_explanation_warnings_for_low_probability_and_incomplete_ig() -> None:
    from biasscope.api import explain, explanation_warnings
    from tests.audit.synth import make_adapter

    adapter = make_adapter(2.0)

    def ig(seed: int, target: str, steps: int):
        return explain(adapter, _noise_image(seed), ["integrated_gradients"], target=target,
                       params={"integrated_gradients": {"steps": steps}}, faithfulness=False)["integrated_gradients"]

    low = ig(0, "background", 64)  # p ~ 2e-4: a class the model does not predict
    assert low.target_probability < 1e-3 and low.checks["completeness_relative"] < 0.1
    assert [("does not predict" in w, "completeness" in w) for w in explanation_warnings(low)] == [(True, False)]
    coarse = ig(1, "scrubs", 4)  # 4 steps over a ReLU network: the attributions miss ~12% of the logit change
    assert coarse.target_probability > 0.1 and coarse.checks["completeness_relative"] > 0.1
    assert [("does not predict" in w, "completeness" in w) for w in explanation_warnings(coarse)] == [(False, True)]
    fine = ig(1, "scrubs", 64)
    assert fine.checks["completeness_relative"] < 0.1 and explanation_warnings(fine) == []
