"""Predicting and explaining in one pass (:meth:`Explainer.explain_choosing_targets`,
:func:`biasscope.api.predict_and_explain`): the CAM family chooses each image's target from the logits of
its own forward pass, and the result equals choosing the targets from a separate prediction first; the
forward passes are counted on a seeded conv net."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from biasscope.api import explain_batch, predict_and_explain
from biasscope.explainers import get_explainer, list_explainers
from biasscope.explainers.base import Explainer
from biasscope.models.adapter import ModelAdapter
from tests.fixtures import SmallReLUNet, f32_tol, make_adapter

CAMS = ["gradcam", "gradcampp", "hirescam", "layercam", "xgradcam", "eigencam", "scorecam"]
N, SIZE, CLASSES = 5, 16, 4


def second_or_first(logits: torch.Tensor, start: int) -> torch.Tensor:
    """A selector that needs the logits and the chunk's offset: even images (by index in the whole batch)
    get their second likeliest class, odd ones their likeliest."""
    order = torch.argsort(logits, dim=1, descending=True, stable=True)
    return torch.stack([order[j, 1 if (start + j) % 2 == 0 else 0] for j in range(logits.shape[0])])


def recording(starts: list[tuple[int, int]]):
    """:func:`second_or_first`, recording each call's ``(start, number of images)`` in ``starts``."""

    def select(logits: torch.Tensor, start: int) -> torch.Tensor:
        starts.append((start, logits.shape[0]))
        return second_or_first(logits, start)

    return select


def counted_adapter(calls: list[int], *, backward: int = 2, fast_dtype: torch.dtype | None = None) -> ModelAdapter:
    """A seeded conv net whose forward records each call's batch size in ``calls``; backward chunks of 2."""
    model = SmallReLUNet(seed=3, classes=CLASSES)
    forward = model.forward
    model.forward = lambda x: calls.append(x.shape[0]) or forward(x)  # type: ignore[method-assign]
    if fast_dtype is None:
        adapter = make_adapter(model, input_size=SIZE, num_classes=CLASSES, target_layer="features.4")
    else:
        adapter = ModelAdapter(name="tiny", model=model, class_names=[f"class_{i}" for i in range(CLASSES)],
                               input_size=SIZE, mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                               target_layer=model.features[4], target_layer_name="features.4",
                               fast_dtype=fast_dtype, check_fast=False)
    adapter.set_batch_sizes(forward=16, backward=backward)
    return adapter


def batch() -> torch.Tensor:
    return torch.randn(N, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(7))


def images() -> list[Image.Image]:
    rng = np.random.default_rng(11)
    return [Image.fromarray(rng.integers(0, 256, (SIZE, SIZE, 3), dtype=np.uint8)) for _ in range(N)]


def test_the_cam_family_and_only_it_predicts_in_its_own_pass() -> None:
    assert sorted(c.name for c in list_explainers() if c.predicts_in_pass) == sorted(CAMS)
    assert Explainer.predicts_in_pass is False


@pytest.mark.parametrize("method", CAMS)
def test_choosing_targets_in_the_pass_equals_choosing_them_from_a_separate_prediction(method: str) -> None:
    calls: list[int] = []
    adapter = counted_adapter(calls)
    exp = get_explainer(method)(adapter)
    x = batch()
    starts: list[tuple[int, int]] = []
    select = recording(starts)
    got = exp.explain_choosing_targets(x, select)
    assert starts == [(0, 2), (2, 2), (4, 1)]  # called once per backward chunk, with its offset
    with torch.no_grad():
        logits = adapter.logits(x)
    want_targets = second_or_first(logits, 0)
    assert got.targets.tolist() == want_targets.tolist()
    assert len(set(want_targets.tolist())) > 1  # the selector matters: not every image gets one class
    np.testing.assert_allclose(got.logits.numpy(), logits.numpy(), rtol=0, atol=f32_tol(logits, factor=64))
    want = exp.run(x, want_targets)
    for g, w in zip(got.maps, want.maps):
        np.testing.assert_allclose(g.numpy(), w.numpy(), rtol=0, atol=f32_tol(w, factor=64) + 1e-12)


def test_a_gradient_cam_predicts_and_explains_in_one_forward_pass() -> None:
    calls: list[int] = []
    adapter = counted_adapter(calls)
    get_explainer("gradcam")(adapter).explain_choosing_targets(batch(), second_or_first)
    assert calls == [2, 2, 1]  # one forward per backward chunk, none for a separate prediction


def test_a_method_without_the_capability_predicts_in_a_separate_pass_first() -> None:
    calls: list[int] = []
    adapter = counted_adapter(calls)
    exp = get_explainer("ig")(adapter, steps=4)
    x = batch()
    starts: list[tuple[int, int]] = []
    select = recording(starts)
    got = exp.explain_choosing_targets(x, select)
    assert starts == [(0, N)]  # one separate prediction of the whole batch
    assert calls[0] == N  # ... before any of IG's own forward passes
    with torch.no_grad():
        logits = adapter.logits(x)
    want_targets = second_or_first(logits, 0)
    assert got.targets.tolist() == want_targets.tolist()
    want = exp.run(x, want_targets)
    np.testing.assert_allclose(got.maps.numpy(), want.maps.numpy(), rtol=0, atol=f32_tol(want.maps, factor=64))


def likeliest_but_one(probs: torch.Tensor, start: int) -> list[int]:
    """The audit's kind of selector, on probabilities: the second likeliest class of each image."""
    return torch.argsort(probs, dim=1, descending=True, stable=True)[:, 1].tolist()


@pytest.mark.parametrize("one_pass", [True, False])
def test_predict_and_explain_equals_explaining_the_chosen_targets(one_pass: bool, monkeypatch) -> None:
    calls: list[int] = []
    adapter = counted_adapter(calls)
    imgs = images()
    if not one_pass:
        monkeypatch.setattr(get_explainer("gradcam"), "predicts_in_pass", False)
    got = predict_and_explain(adapter, imgs, ["gradcam", "hirescam"], select=likeliest_but_one, faithfulness=False)
    # one pass: Grad-CAM's forward+backward per chunk of 2 serves the prediction, then HiResCAM's;
    # without the capability, a separate prediction of all five images comes first
    assert calls == ([] if one_pass else [N]) + [2, 2, 1] * 2
    x = adapter.preprocess(imgs)
    probs = adapter.probabilities(x, fast=False)
    np.testing.assert_allclose(got.probabilities.numpy(), probs.numpy(), rtol=0, atol=1e-6)
    assert got.targets == likeliest_but_one(probs, 0)
    want = explain_batch(adapter, imgs, ["gradcam", "hirescam"], target=got.targets, faithfulness=False)
    for g, w in zip(got.explanations, want):
        for m in ("gradcam", "hirescam"):
            assert g[m].target == w[m].target
            assert g[m].target_probability == pytest.approx(w[m].target_probability, abs=1e-6)
            np.testing.assert_allclose(g[m].heatmap, w[m].heatmap, rtol=0,
                                       atol=f32_tol(w[m].heatmap, factor=64) + 1e-12)


def test_with_a_reduced_precision_the_prediction_is_separate_and_explanations_report_fp32() -> None:
    calls: list[int] = []
    adapter = counted_adapter(calls, fast_dtype=torch.bfloat16)
    imgs = images()
    got = predict_and_explain(adapter, imgs, ["gradcam"], select=likeliest_but_one, faithfulness=False)
    # the bf16 prediction, the fp32 probabilities the explanations report, then Grad-CAM's own passes
    assert calls == [N, N, 2, 2, 1]
    x = adapter.preprocess(imgs)
    fp32 = adapter.probabilities(x, fast=False)
    fast = adapter.probabilities(x)
    np.testing.assert_array_equal(got.probabilities.numpy(), fast.numpy())
    assert got.targets == likeliest_but_one(fast, 0)
    for i, e in enumerate(got.explanations):
        assert e["gradcam"].target_probability == float(fp32[i, got.targets[i]])


def test_predict_and_explain_without_methods_only_predicts() -> None:
    calls: list[int] = []
    adapter = counted_adapter(calls)
    got = predict_and_explain(adapter, images(), [], select=likeliest_but_one)
    assert calls == [N] and got.explanations == [{}] * N
    assert got.targets == likeliest_but_one(got.probabilities, 0)


def test_a_method_that_declares_the_capability_but_returns_no_prediction_is_refused() -> None:
    from biasscope.errors import ExplainerError
    from biasscope.explainers import Attribution

    class Careless(Explainer):  # not registered: only for this test
        name = "careless"
        label = "Careless"
        predicts_in_pass = True

        def attribute(self, x: torch.Tensor, targets: torch.Tensor) -> Attribution:
            return Attribution(maps=torch.zeros(x.shape[0], 2, 2))

    with pytest.raises(ExplainerError, match="declares predicts_in_pass but returned no logits or targets"):
        Careless(counted_adapter([])).explain_choosing_targets(batch(), second_or_first)
