"""The adapter's public collaborators: ``with_model``, ``set_batch_sizes``, ``autocast``, and the
randomisation check keeping the adapter's backend and precision (it cloned field by field before)."""

from __future__ import annotations

import ast
import copy
from pathlib import Path

import pytest
import torch
from torch import nn

import biasscope
from biasscope.models import ModelAdapter


class Net(nn.Module):
    """conv (2 channels: mean of R, mean of G) -> relu -> global average -> linear; hand-set weights."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Conv2d(3, 2, 1, bias=False)
        self.head = nn.Linear(2, 2, bias=False)
        with torch.no_grad():
            self.features.weight.copy_(torch.tensor([[1.0, 0, 0], [0, 1.0, 0]]).view(2, 3, 1, 1))
            self.head.weight.copy_(torch.eye(2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(torch.relu(self.features(x)).mean(dim=(2, 3)))


def _adapter(**kw) -> ModelAdapter:
    net = Net()
    return ModelAdapter(name="net", model=net, class_names=["red", "green"], input_size=8, mean=(0.0, 0.0, 0.0),
                        std=(1.0, 1.0, 1.0), target_layer=net.features, target_layer_name="features", **kw)


def test_with_model_keeps_everything_but_the_model_and_its_state() -> None:
    ad = _adapter(backend="torch", fast_dtype=torch.bfloat16)
    ad.set_batch_sizes(forward=5, backward=3)
    other = copy.deepcopy(ad.model)
    with torch.no_grad():
        other.head.weight.copy_(torch.tensor([[0.0, 1.0], [1.0, 0.0]]))  # swaps the two classes
    clone = ad.with_model(other, name="swapped")
    assert clone.model is other and clone.target_layer is other.features and clone.target_layer_name == "features"
    assert (clone.backend, clone.fast_dtype, clone.input_size, clone.mean, clone.class_names) == (
        "torch", torch.bfloat16, 8, (0.0, 0.0, 0.0), ["red", "green"])
    assert clone.name == "swapped" and clone.batch_sizes == {} and ad.batch_sizes == {"forward": 5, "backward": 3}
    x = torch.zeros(1, 3, 8, 8)
    x[:, 0] = 1.0  # all red: logits (1, 0) for the original, (0, 1) for the swapped head
    assert ad.logits(x).tolist() == [[1.0, 0.0]] and clone.logits(x).tolist() == [[0.0, 1.0]]
    assert ad.to_dict()["precision"] == clone.to_dict()["precision"]


def test_with_model_carries_the_precision_verdict() -> None:
    ad = _adapter(backend="torch", fast_dtype=torch.bfloat16, check_fast=True)
    ad._fast.pending, ad._fast.reason = False, "decided"  # as after check_precision
    clone = ad.with_model(copy.deepcopy(ad.model))
    assert not clone._fast.pending and clone.to_dict()["precision"]["reason"] == "decided"
    assert clone._fast.lock is not ad._fast.lock


def test_set_batch_sizes_is_used_and_validated() -> None:
    ad = _adapter(backend="torch")
    ad.set_batch_sizes(forward=2, backward=7, onnxruntime=4)
    assert ad.batch_size("forward", work=1000) == 2 and ad.batch_size("backward", work=1000) == 7
    assert ad.batch_sizes == {"forward": 2, "backward": 7, "forward:onnxruntime": 4}
    with pytest.raises(ValueError, match="at least 1"):
        ad.set_batch_sizes(forward=0)


def test_autocast_only_with_a_fast_dtype() -> None:
    x = torch.rand(1, 3, 8, 8)
    fast, plain = _adapter(fast_dtype=torch.bfloat16), _adapter()
    with fast.autocast(True):
        assert fast.logits(x).dtype == torch.bfloat16
    with fast.autocast(False):
        assert fast.logits(x).dtype == torch.float32
    with plain.autocast(True):  # no fast dtype: fp32
        assert plain.logits(x).dtype == torch.float32


def test_randomization_check_keeps_backend_and_precision(monkeypatch: pytest.MonkeyPatch) -> None:
    from PIL import Image

    from biasscope.evaluation import randomization_check

    seen = []
    real = ModelAdapter.with_model

    def spy(self, model, **kw):
        out = real(self, model, **kw)
        seen.append(out)
        return out

    monkeypatch.setattr(ModelAdapter, "with_model", spy)
    ad = _adapter(backend="torch", fast_dtype=torch.bfloat16)
    img = Image.new("RGB", (8, 8), (200, 10, 10))
    res = randomization_check(ad, img, "gradcam", max_steps=1, seed=0)
    assert res.method == "gradcam" and res.layers == ["head"] and len(res.spearman) == 1
    (clone,) = seen
    assert clone.fast_dtype is torch.bfloat16 and clone.backend == "torch" and clone.model is not ad.model


def _imported(path: Path) -> set[str]:
    """Absolute names of the ``biasscope`` modules ``path`` imports anywhere (function-level imports too)."""
    root = Path(biasscope.__file__).parent
    pkg = ["biasscope", *path.parent.relative_to(root).parts]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            base = pkg[: len(pkg) - node.level + 1] if node.level else []
            out.add(".".join([*base, *(node.module or "").split(".")]).strip("."))
    return out


def test_the_former_import_cycles_are_gone() -> None:
    """adapter.py <-> batching.py and api.py <-> evaluation/sanity.py imported each other."""
    root = Path(biasscope.__file__).parent
    assert "biasscope.models.batching" in _imported(root / "models/adapter.py")
    assert "biasscope.models.adapter" not in _imported(root / "models/batching.py")
    assert "biasscope.api" not in _imported(root / "evaluation/sanity.py")
