"""Tiny models with hand-set (or seeded) weights whose explanations can be checked by hand,
and helpers to wrap them in a :class:`~biasscope.models.adapter.ModelAdapter`."""

from __future__ import annotations

import functools

import torch
from torch import nn

from biasscope.models.adapter import ModelAdapter

__all__ = [
    "ExplodingNet",
    "HandConvNet",
    "LinearModel",
    "QuadraticModel",
    "SmallReLUNet",
    "SmoothNet",
    "f32_tol",
    "leftover_hooks",
    "make_adapter",
    "mobilenet_v2_adapter",
    "real_image_batch",
    "real_images",
]


#: float32 machine epsilon
EPS32 = float(torch.finfo(torch.float32).eps)


def f32_tol(*terms: torch.Tensor | float, factor: float = 16.0) -> float:
    """Absolute tolerance for a float32 result built from sums of ``terms``.

    Round-off in a float32 sum (and in a difference of sums) is proportional to the magnitude of the
    summed terms, ``eps * sum |t|``, not to the result: a small difference of two large sums can be
    off by far more than ``rel * result``, and by different amounts on CPUs whose kernels sum in another
    order (oneDNN on AVX-512 vs AMX). ``factor`` is the allowed multiple of that bound.
    """
    total = sum(float(torch.as_tensor(t, dtype=torch.float64).abs().sum()) for t in terms)
    return factor * EPS32 * total


def make_adapter(
    model: nn.Module,
    *,
    input_size: int,
    num_classes: int,
    target_layer: str | None = None,
    mean: tuple[float, float, float] = (0.0, 0.0, 0.0),
    std: tuple[float, float, float] = (1.0, 1.0, 1.0),
    name: str = "tiny",
    batch_size: int | None = 16,
) -> ModelAdapter:
    """Adapter around a test model; mean 0 / std 1 by default so normalised == raw pixels.

    ``batch_size`` fixes the forward/backward batch sizes (measuring them costs seconds per model
    on a shared machine; small sizes also exercise the chunked code paths). ``None`` measures.
    """
    layer = dict(model.named_modules())[target_layer] if target_layer else None
    adapter = ModelAdapter(
        name=name,
        model=model,
        class_names=[f"class_{i}" for i in range(num_classes)],
        input_size=input_size,
        mean=mean,
        std=std,
        target_layer=layer,
        target_layer_name=target_layer,
    )
    if batch_size is not None:
        adapter.set_batch_sizes(forward=batch_size, backward=batch_size)
    return adapter


class HandConvNet(nn.Module):
    """``conv`` (3 -> 2 channels, 2x2 kernel, hand-set weights) -> ReLU -> flatten -> linear (2 classes).

    On a 4x4 input the conv output (the CAM layer) is 2x3x3, so ``d logit_c / d A[k, i, j]`` is
    ``V[c, k, i, j] * [A[k, i, j] > 0]``: Grad-CAM and Grad-CAM++ maps follow on paper.
    """

    #: conv kernels (out, in, 2, 2)
    KERNEL = torch.tensor(
        [
            [[[1.0, 0.0], [0.0, 1.0]], [[0.0, 1.0], [0.0, 0.0]], [[-1.0, 0.0], [0.0, 0.0]]],
            [[[0.0, -1.0], [1.0, 0.0]], [[1.0, 0.0], [0.0, 0.0]], [[0.0, 0.0], [1.0, 1.0]]],
        ]
    )
    BIAS = torch.tensor([0.5, -0.75])
    #: head weights (classes, channels, 3, 3)
    HEAD = torch.tensor(
        [
            [
                [[1.0, 2.0, 0.0], [0.0, 1.0, -1.0], [3.0, 0.0, 1.0]],
                [[0.0, 1.0, 1.0], [-2.0, 0.0, 1.0], [1.0, 1.0, 0.0]],
            ],
            [
                [[0.0, 0.0, 1.0], [1.0, -1.0, 0.0], [0.0, 2.0, 0.0]],
                [[1.0, 0.0, -1.0], [0.0, 2.0, 0.0], [0.0, 1.0, 3.0]],
            ],
        ]
    )

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 2, kernel_size=2)
        self.relu = nn.ReLU()
        self.fc = nn.Linear(18, 2, bias=True)
        with torch.no_grad():
            self.conv.weight.copy_(self.KERNEL)
            self.conv.bias.copy_(self.BIAS)
            self.fc.weight.copy_(self.HEAD.reshape(2, 18))
            self.fc.bias.copy_(torch.tensor([0.25, -0.25]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.relu(self.conv(x)).flatten(1))


class LinearModel(nn.Module):
    """``logits[:, c] = sum(W[c] * x) + b[c]`` with ``W`` of shape ``(C, 3, S, S)``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone().float())
        self.bias = nn.Parameter(bias.clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kchw->nk", x, self.weight) + self.bias


class QuadraticModel(nn.Module):
    """``logits[:, c] = sum(A[c] * x**2)``: IG attributions are exactly ``A[c] (x^2 - b^2)``."""

    def __init__(self, a: torch.Tensor) -> None:
        super().__init__()
        self.a = nn.Parameter(a.clone().float())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.einsum("nchw,kchw->nk", x * x, self.a)


class SmoothNet(nn.Module):
    """Seeded conv -> tanh -> conv -> softplus -> mean pool -> linear: smooth everywhere."""

    def __init__(self, seed: int = 0, classes: int = 3) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.conv1 = nn.Conv2d(3, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 8, 3, padding=1)
        self.fc = nn.Linear(8, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = nn.functional.softplus(self.conv2(torch.tanh(self.conv1(x))))
        return self.fc(h.mean(dim=(2, 3)))


class SmallReLUNet(nn.Module):
    """Seeded conv-ReLU-conv-ReLU-conv(``features.4``, the CAM layer)-ReLU-avgpool-linear."""

    def __init__(self, seed: int = 0, classes: int = 4, width: int = 16) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(
            nn.Conv2d(3, width, 3, padding=1),
            nn.ReLU(),
            nn.Conv2d(width, width, 3, padding=1, stride=2),
            nn.ReLU(inplace=True),
            nn.Conv2d(width, width, 3, padding=1),
            nn.ReLU(),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(width, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * (0.3 if p.ndim > 1 else 0.1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.pool(self.features(x)).flatten(1))


class ExplodingNet(SmallReLUNet):
    """:class:`SmallReLUNet` that raises inside ``forward`` (after the CAM layer ran) when
    ``explode`` is set: for checking that hooks are removed after errors."""

    explode = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.features(x)
        if self.explode:
            raise RuntimeError("boom inside forward")
        return self.fc(self.pool(h).flatten(1))


def leftover_hooks(model: nn.Module) -> list[str]:
    """Every hook still registered on ``model``'s modules (and global module hooks), by name."""
    from torch.nn.modules import module as mod

    found = []
    for name, m in model.named_modules():
        for attr in (
            "_forward_hooks",
            "_forward_pre_hooks",
            "_backward_hooks",
            "_backward_pre_hooks",
            "_forward_hooks_with_kwargs",
            "_forward_pre_hooks_with_kwargs",
        ):
            if getattr(m, attr, None):
                found.append(f"{name or '<root>'}.{attr}")
    for attr in (
        "_global_forward_hooks",
        "_global_forward_pre_hooks",
        "_global_backward_hooks",
        "_global_backward_pre_hooks",
    ):
        if getattr(mod, attr, None):
            found.append(f"global {attr}")
    return found


@functools.cache
def mobilenet_v2_adapter() -> ModelAdapter:
    """The real ImageNet MobileNetV2 (offline weights), loaded once per test process."""
    from biasscope.models import load_model

    adapter = load_model("mobilenet_v2")
    # measuring batch sizes costs seconds on a shared 2-core machine; batching has its own tests
    adapter.set_batch_sizes(forward=8, backward=8)
    return adapter


@functools.cache
def real_images() -> tuple:
    """Two real photos as PIL images: skimage's chelsea (a cat) and coffee (an espresso)."""
    from PIL import Image
    from skimage import data

    return (Image.fromarray(data.chelsea()), Image.fromarray(data.coffee()))


def real_image_batch(adapter: ModelAdapter) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`real_images` preprocessed for ``adapter`` and its top-1 classes."""
    x = adapter.preprocess(list(real_images()))
    return x, adapter.probabilities(x, fast=False).argmax(1)


# ---------------------------------------------------------------- perturbation explainers (LIME, SHAP, occlusion)
class PixelLinearProbabilityModel(nn.Module):
    """Two classes whose class-1 probability is ``g(x) ** power`` with ``g(x) = offset + sum(W * x)``.

    Logits are ``[log(1 - p), log(p)]``, so softmax returns ``p`` exactly. With ``power=1`` hiding
    superpixels is an additive game: superpixel ``k`` contributes ``sum_{pixels in k} W (x - fill)``.
    """

    def __init__(self, weight: torch.Tensor, offset: float = 0.5, power: int = 1) -> None:
        super().__init__()
        self.weight = nn.Parameter(weight.clone().float())
        self.offset = offset
        self.power = power

    def g(self, x: torch.Tensor) -> torch.Tensor:
        return self.offset + torch.einsum("nchw,chw->n", x.double(), self.weight.double())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.g(x) ** self.power
        return torch.stack([torch.log1p(-p), torch.log(p)], dim=1).float()


def blocky_image(size: int = 32, blocks: int = 4, seed: int = 0, noise: float = 4.0) -> Image.Image:  # noqa: F821
    """A ``size x size`` RGB image of ``blocks x blocks`` flat random colours plus Gaussian noise
    (standard deviation ``noise`` grey levels)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 256, size=(blocks, blocks, 3))
    img = np.kron(colours, np.ones((size // blocks, size // blocks, 1)))
    img = img + rng.normal(0, noise, img.shape)
    return Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))


def pixel_linear_adapter(size: int = 32, *, power: int = 1, seed: int = 0, scale: float = 2e-3) -> ModelAdapter:
    """:class:`PixelLinearProbabilityModel` with seeded weights in ``[-scale, scale]`` (mean 0, std 1)."""
    g = torch.Generator().manual_seed(seed)
    w = (torch.rand(3, size, size, generator=g) * 2 - 1) * scale
    return make_adapter(PixelLinearProbabilityModel(w, power=power), input_size=size, num_classes=2)


__all__ += ["PixelLinearProbabilityModel", "blocky_image", "pixel_linear_adapter"]


def planted_contributions(model: PixelLinearProbabilityModel, x: torch.Tensor, segments: object, hide: str) -> object:
    """Per-superpixel contribution ``sum_{p in k} W (x - fill)`` of one image ``x`` ``(3, S, S)``
    (mean 0 / std 1 adapter) under ``hide`` 'black' (fill 0) or 'mean' (superpixel mean colour),
    computed with a plain loop over superpixels."""
    import numpy as np

    seg = np.asarray(segments)
    xs = x.double().numpy()
    w = model.weight.detach().double().numpy()
    out = np.zeros(seg.max() + 1)
    for k in range(seg.max() + 1):
        inside = seg == k
        fill = xs[:, inside].mean(axis=1, keepdims=True) if hide == "mean" else 0.0
        out[k] = float((w[:, inside] * (xs[:, inside] - fill)).sum())
    return out


__all__ += ["planted_contributions"]


@functools.cache
def small_mobilenet_v2_chelsea(size: int = 112) -> tuple[ModelAdapter, torch.Tensor, int]:
    """The real MobileNetV2 run at ``size x size`` (cheaper perturbation tests), fp32, with skimage's
    chelsea preprocessed for it and its top-1 class (Egyptian cat)."""
    from biasscope.models import load_model

    adapter = load_model("mobilenet_v2", input_size=size)
    adapter.set_batch_sizes(forward=32, backward=8)
    x = adapter.preprocess(real_images()[0])
    return adapter, x, int(adapter.probabilities(x, fast=False).argmax())


__all__ += ["small_mobilenet_v2_chelsea"]
