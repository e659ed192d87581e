"""ONNX Runtime backend for gradient-free forwards: equal to PyTorch, checked, lazy, with fallbacks."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from skimage import data
from torch import nn

from biasscope.errors import ModelError
from biasscope.images import load_image
from biasscope.models import ModelAdapter, load_model
from biasscope.models import ort as ort_mod
from biasscope.models.ort import MIN_WORK


def _net(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, 5),
    )


def _adapter(model: nn.Module, backend: str) -> ModelAdapter:
    return ModelAdapter(
        name="net", model=model, class_names=[f"c{i}" for i in range(5)], input_size=16, backend=backend
    )


class Untraceable(nn.Module):
    """Data-dependent Python control flow on a tensor's value: the ONNX tracer cannot export it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = x.mean(dim=(2, 3))
        if float(pooled.sum()) > 0:  # a Python branch on data
            return self.fc(pooled)
        return -self.fc(pooled)


def test_auto_switches_to_onnxruntime_after_a_large_job_and_equals_torch() -> None:
    x = torch.randn(40, 3, 16, 16)
    ours, ref = _adapter(_net(), "auto"), _adapter(_net(), "torch")
    small = ours.probabilities(x[: MIN_WORK - 1])
    assert ours.active_backend == "torch"  # a small job does not pay for the export
    torch.testing.assert_close(small, ref.probabilities(x[: MIN_WORK - 1]))
    big = ours.probabilities(x)
    assert ours.active_backend == "onnxruntime" and ref.active_backend == "torch"
    assert "matches PyTorch" in ours.to_dict()["backend"]["reason"]
    torch.testing.assert_close(big, ref.probabilities(x), atol=1e-5, rtol=1e-4)
    # once ready, small jobs use it too; values do not depend on the batch size
    torch.testing.assert_close(ours.probabilities(x[:3]), big[:3], atol=1e-6, rtol=1e-5)
    torch.testing.assert_close(ours.probabilities(x, batch_size=7), big, atol=1e-6, rtol=1e-5)


def test_gradients_and_fast_dtype_stay_on_torch() -> None:
    ad = _adapter(_net(), "onnxruntime")
    x = torch.randn(MIN_WORK, 3, 16, 16)
    ad.probabilities(x)
    assert ad.active_backend == "onnxruntime"
    p = x.clone().requires_grad_(True)
    ad.logits(p)[:, 0].sum().backward()  # logits() is the differentiable PyTorch forward
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_input_dependent_graph_is_refused_not_frozen() -> None:
    x = torch.rand(MIN_WORK, 3, 16, 16)
    torch.manual_seed(0)
    auto = _adapter(Untraceable(), "auto")
    torch.manual_seed(0)
    ref = _adapter(Untraceable(), "torch")
    # traced at one input, the branch would be frozen; the tracer's warning makes the export fail instead
    for batch in (x, -x):
        torch.testing.assert_close(auto.probabilities(batch), ref.probabilities(batch))
    d = auto.to_dict()["backend"]
    assert d["active"] == "torch" and "depends on its input" in d["reason"]
    with pytest.raises(ModelError, match="depends on its input"):
        _adapter(Untraceable(), "onnxruntime").probabilities(x)


def test_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    class Wrong(ort_mod.OrtRunner):
        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return super().logits(x) + torch.arange(5.0)  # a runtime that changes the answer

    monkeypatch.setattr("biasscope.models.adapter.OrtRunner", Wrong)
    x = torch.randn(MIN_WORK, 3, 16, 16)
    auto = _adapter(_net(), "auto")
    torch.testing.assert_close(auto.probabilities(x), _adapter(_net(), "torch").probabilities(x))
    d = auto.to_dict()["backend"]
    assert d["active"] == "torch" and "disagrees" in d["reason"]
    with pytest.raises(ModelError, match=r"onnxruntime is not usable.*disagrees"):
        _adapter(_net(), "onnxruntime").probabilities(x)


def test_missing_onnxruntime_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("biasscope.models.adapter.ort_available", lambda: False)
    ad = _adapter(_net(), "auto")
    ad.probabilities(torch.randn(MIN_WORK, 3, 16, 16))
    assert ad.active_backend == "torch" and "pip install 'biasscope[onnx]'" in ad.to_dict()["backend"]["reason"]


def test_unknown_backend() -> None:
    with pytest.raises(ModelError, match="unknown backend"):
        _adapter(_net(), "tensorrt")


def test_pickled_adapter_rebuilds_its_session() -> None:
    ad = _adapter(_net(), "auto")
    x = torch.randn(MIN_WORK, 3, 16, 16)
    want = ad.probabilities(x)
    copy = pickle.loads(pickle.dumps(ad))
    assert copy.active_backend == "torch" and copy.backend == "auto"
    torch.testing.assert_close(copy.probabilities(x), want, atol=1e-5, rtol=1e-4)
    assert copy.active_backend == "onnxruntime"


def test_real_mobilenet_same_predictions_on_both_backends() -> None:
    photos = [load_image(a) for a in (data.coffee(), data.chelsea(), data.astronaut(), data.rocket())]
    ort_ad = load_model("mobilenet_v2", backend="onnxruntime")
    torch_ad = load_model("mobilenet_v2", backend="torch")
    x = ort_ad.preprocess(photos * 4)
    p_ort, p_torch = ort_ad.probabilities(x), torch_ad.probabilities(x)
    assert ort_ad.active_backend == "onnxruntime"
    assert float((p_ort - p_torch).abs().max()) < 1e-4
    assert torch.equal(p_ort.argmax(1), p_torch.argmax(1))
    assert np.isclose(float(p_ort[0].sum()), 1.0, atol=1e-5)
