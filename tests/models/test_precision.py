"""``precision='auto'`` is decided on representative photos, never on one request's images.

The adapters are built with ``fast_dtype=torch.bfloat16, check_fast=True`` explicitly, so the check
runs whatever the CPU (bf16 autocast works everywhere; only its speed needs AMX).
"""

from __future__ import annotations

import pickle

import pytest
import torch
from torch import nn

from biasscope.models import ModelAdapter
from biasscope.models.adapter import FAST_PROB_TOL
from biasscope.models.calibration import PHOTOS, representative_split


class TieUnlessFlat(nn.Module):
    """Logits ``[1000, 1000 + 0.5 + 60 * flat]`` where ``flat`` is 1 for a uniform image and 0 for any
    image whose normalised values spread over the image by more than 0.05 in some channel (every photo).

    On photos fp32 gives ``softmax([0, 0.5]) = (0.378, 0.622)``, but bf16 (8-bit mantissa: 1000.5 is
    not representable, its neighbours are 1000 and 1004) rounds both logits to 1000: (0.5, 0.5), an
    error of 0.122. On a uniform image the margin is 60.5 and both give (0, 1) to 1e-26."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(2, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0], [60.0, 0.5]]))
            self.fc.bias.copy_(torch.tensor([1000.0, 1000.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.relu(1 - 20 * x.std(dim=(2, 3)).amax(dim=1))
        return self.fc(torch.stack([flat, torch.ones_like(flat)], dim=1))


class Smooth(nn.Module):
    """Well-separated logits of moderate size: bf16 rounding moves probabilities by ~1e-3 at most."""

    def __init__(self) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(0)
        self.fc = nn.Linear(3, 4)
        with torch.no_grad():
            self.fc.weight.copy_(torch.randn(4, 3, generator=g))
            self.fc.bias.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def _auto(model: nn.Module, classes: int) -> ModelAdapter:
    return ModelAdapter(name="m", model=model, class_names=[f"c{i}" for i in range(classes)], input_size=32,
                        fast_dtype=torch.bfloat16, check_fast=True, backend="torch", target_layer=None,
                        supports_hooks=False)


def _flat_image_batch(ad: ModelAdapter) -> torch.Tensor:
    return ad.normalize(torch.full((1, 3, 32, 32), 0.5))


def test_the_representative_set_is_real_photos_split_by_photo() -> None:
    calibration, held_out = representative_split()
    assert len(calibration) == len(held_out) == len(PHOTOS)  # every photo and its variant loaded
    names = lambda part: {n.split(" (")[0] for n, _ in part}  # noqa: E731
    assert not names(calibration) & names(held_out)  # a photo and its variant stay on one side
    assert all(im.mode == "RGB" and max(im.size) <= 320 for _, im in calibration + held_out)


def test_one_agreeing_image_does_not_decide_auto() -> None:
    ad = _auto(TieUnlessFlat(), 2)
    x = _flat_image_batch(ad)
    assert _one_image_diff(ad, x) < 1e-6  # a check on this request alone would have kept bf16 ...
    p = ad.probabilities(x)
    info = ad.to_dict()["precision"]
    assert ad.fast_dtype is None and info["active"] == "fp32" and info["requested"] == "auto"  # ... auto refuses
    check = info["check"]
    assert check["verdict"] == "fp32" and check["images"] == 2 * len(PHOTOS)
    for part in ("calibration", "held_out"):  # the error is there on photos the decision did not see too
        assert check[part]["images"] == len(PHOTOS)
        assert check[part]["max_dp"] == pytest.approx(0.1225, abs=0.01)
    assert check["tolerance"] == FAST_PROB_TOL
    assert "disagrees with fp32 on representative photos" in info["reason"] and "held-out 14" in info["reason"]
    with torch.no_grad():  # and the request's answer is fp32's
        torch.testing.assert_close(p, torch.softmax(TieUnlessFlat()(x), 1))


def _one_image_diff(ad: ModelAdapter, x: torch.Tensor) -> float:
    """What the old check, made on the first request's images, measured."""
    with torch.no_grad():
        want = torch.softmax(ad.logits(x).float(), 1)
        with ad.autocast(True):
            got = torch.softmax(ad.logits(x).float(), 1)
    return float((got - want).abs().max())


def test_warm_up_decides_before_any_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BIASSCOPE_BATCH_SIZE", "8")
    ad = _auto(TieUnlessFlat(), 2)
    assert ad._fast.pending and ad.to_dict()["precision"]["check"] is None
    ad.warm_up()
    assert not ad._fast.pending and ad.fast_dtype is None
    assert ad.to_dict()["precision"]["check"]["verdict"] == "fp32"


def test_a_model_that_holds_the_tolerance_keeps_bf16_with_its_figures() -> None:
    ad = _auto(Smooth(), 4)
    assert ad.fast_forwards(torch.rand(2, 3, 32, 32))
    check = ad.to_dict()["precision"]["check"]
    assert check["verdict"] == "bf16" and ad.fast_dtype is torch.bfloat16
    for part in ("calibration", "held_out"):
        assert 0 < check[part]["max_dp"] <= FAST_PROB_TOL and check[part]["top1_flips"] == 0
    # the recorded maximum is the real one: recompute it over all photos
    calibration, held_out = representative_split()
    x = ad.preprocess([im for _, im in calibration + held_out])
    with torch.no_grad():
        want = torch.softmax(ad.logits(x), 1)
        with ad.autocast(True):
            got = torch.softmax(ad.logits(x).float(), 1)
    assert max(check["calibration"]["max_dp"], check["held_out"]["max_dp"]) == pytest.approx(
        float((got - want).abs().max()), abs=1e-7)
    copy = pickle.loads(pickle.dumps(ad))  # the verdict and its figures travel with the adapter
    assert copy.to_dict()["precision"] == ad.to_dict()["precision"] and not copy._fast.pending


def test_without_representative_photos_auto_means_fp32(monkeypatch: pytest.MonkeyPatch) -> None:
    from biasscope.models import calibration

    monkeypatch.setattr(calibration, "representative_split", lambda: ((), ()))
    ad = _auto(Smooth(), 4)
    assert not ad.fast_forwards(torch.rand(2, 3, 32, 32))
    assert "no representative photos could be loaded" in ad.to_dict()["precision"]["reason"]
