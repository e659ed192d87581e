"""CAMs on vision transformers: the token-to-grid reshape on a hand-built transformer whose Grad-CAM
follows on paper, and agreement with pytorch-grad-cam (given its documented reshape_transform) on
random-initialised torchvision ``vit_b_16`` and ``swin_t`` (mechanics only: no pretrained weights here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from biasscope.errors import ExplainerError
from biasscope.explainers._cam import to_grid
from biasscope.explainers.gradcam import GradCAM
from biasscope.models.adapter import ModelAdapter
from tests.fixtures import make_adapter


class HandTokenNet(nn.Module):
    """A 4x4 image -> 2x2 patches -> tokens ``[cls, reg..., p00, p01, p10, p11]`` of 2 features
    (``E @ patch mean`` per patch) -> ``ln_1`` (identity, the CAM layer) -> class output
    ``sum_j a_j token_j`` (fixed token mixing, like attention with frozen weights) -> linear head.

    ``d logit_c / d token_j[k] = a_j H[c, k]``, so Grad-CAM on the patch tokens is computed on paper.
    ``layout='nhwc'`` hooks the patch tokens as a channels-last ``(N, 2, 2, 3)`` map instead.
    """

    E = torch.tensor([[1.0, -1.0, 0.5], [0.0, 2.0, -1.0], [0.5, 0.5, 1.0]])  # (features, RGB)
    CLS = torch.tensor([0.3, -0.2, 0.1])
    H = torch.tensor([[1.0, -2.0, 0.5], [0.5, 1.5, -1.0]])  # (classes, features)

    def __init__(self, registers: int = 0, layout: str = "tokens") -> None:
        super().__init__()
        self.registers = registers
        self.layout = layout
        self.ln_1 = nn.Identity()
        prefix = 1 + registers
        # mixing weights: prefix tokens first, then the four patches (row-major)
        self.a = torch.tensor([0.1] * prefix + [1.0, -0.5, 2.0, 0.25])

    def patch_tokens(self, x: torch.Tensor) -> torch.Tensor:
        patches = x.unfold(2, 2, 2).unfold(3, 2, 2).mean(dim=(-1, -2))  # (N, 3, 2, 2)
        return torch.einsum("fc,nchw->nhwf", self.E, patches)  # (N, 2, 2, features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        p = self.patch_tokens(x)
        n = x.shape[0]
        if self.layout == "nhwc":
            g = self.ln_1(p).reshape(n, 4, 3)
            toks = torch.cat([self.CLS.expand(n, 1, 3), g], 1)
        else:
            prefix = self.CLS.expand(n, 1 + self.registers, 3)
            toks = self.ln_1(torch.cat([prefix, p.reshape(n, 4, 3)], 1))
        a = self.a[-toks.shape[1] :]
        pooled = (a[None, :, None] * toks).sum(1)
        return pooled @ self.H.T


def hand_gradcam(x: np.ndarray, target: int) -> np.ndarray:
    """Grad-CAM of :class:`HandTokenNet` on paper: patch features ``T[i, j, k]``, gradients
    ``a_ij H[c, k]``, channel weights their mean over the four patches."""
    E = HandTokenNet.E.double().numpy()
    H = HandTokenNet.H.double().numpy()
    a = np.array([[1.0, -0.5], [2.0, 0.25]])
    T = np.zeros((2, 2, 3))
    for i in range(2):
        for j in range(2):
            mean = x[:, 2 * i : 2 * i + 2, 2 * j : 2 * j + 2].mean(axis=(1, 2))
            T[i, j] = E @ mean
    w = np.array([np.mean(a * H[target, k]) for k in range(3)])
    return np.maximum((T * w).sum(-1), 0)


X = np.arange(48, dtype=np.float64).reshape(3, 4, 4) % 7 - 3.0  # no symmetry: row-major order matters


@pytest.mark.parametrize(("registers", "layout"), [(0, "tokens"), (4, "tokens"), (0, "nhwc")])
@pytest.mark.parametrize("target", [0, 1])
def test_gradcam_on_hand_transformer_equals_paper(registers, layout, target):
    model = HandTokenNet(registers=registers, layout=layout)
    adapter = make_adapter(model, input_size=4, num_classes=2, target_layer="ln_1")
    assert adapter.target_layout == "auto"  # detected from the shapes: (N, 5 or 9, 3) and (N, 2, 2, 3)
    x = torch.tensor(X, dtype=torch.float32)[None]
    got = GradCAM(adapter).attribute(x, torch.tensor([target])).maps[0].numpy()
    expected = hand_gradcam(X, target)
    assert (expected > 0).any() and (expected == 0).any()  # the ReLU matters on this input
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * np.abs(expected).max())


def test_to_grid_layouts():
    t = torch.arange(2 * 7 * 3, dtype=torch.float32).reshape(2, 7, 3)  # 1 cls + 2 registers + 2x2 patches
    g = to_grid(t)
    assert g.shape == (2, 3, 2, 2)
    torch.testing.assert_close(g[1, :, 0, 1], t[1, 4])  # patch (0, 1) is the second patch token
    torch.testing.assert_close(to_grid(t.transpose(0, 1).contiguous(), batch=2), g)  # sequence-first
    # 4 registers + cls + 2x2 patches = 9 tokens: a 3x3 grid cannot tile a 4x4 input, a 2x2 one can
    t9 = torch.randn(1, 9, 3)
    assert to_grid(t9).shape == (1, 3, 3, 3)
    torch.testing.assert_close(to_grid(t9, size=4), t9[:, 5:].reshape(1, 2, 2, 3).permute(0, 3, 1, 2))
    m = torch.randn(2, 5, 5, 8)
    torch.testing.assert_close(to_grid(m), m.permute(0, 3, 1, 2))  # channels-last detected
    torch.testing.assert_close(to_grid(m, "nchw"), m)  # an explicit layout wins
    with pytest.raises(ExplainerError, match="choose another --target-layer"):
        to_grid(torch.zeros(2, 3))


# ---------------------------------------------------------------- torchvision transformers vs pytorch-grad-cam
def _vit_reshape(tensor, height=14, width=14):
    """pytorch-grad-cam's documented ViT reshape_transform (docs/vision_transformers)."""
    result = tensor[:, 1:, :].reshape(tensor.size(0), height, width, tensor.size(2))
    return result.transpose(2, 3).transpose(1, 2)


def _swin_reshape(tensor):
    """Channels-last (N, H, W, C) Swin maps to (N, C, H, W), as pytorch-grad-cam's Swin example does."""
    return tensor.transpose(2, 3).transpose(1, 2)


def _random_zoo_adapter(name: str) -> ModelAdapter:
    """A random-initialised torchvision model wired the way ``load_model(name, weights=...)`` wires it."""
    from biasscope.models.zoo import build_architecture, default_target_layer, target_layout

    torch.manual_seed(0)
    model = build_architecture(name, 10)
    if name.startswith("vit"):  # torchvision zero-initialises the ViT head: every gradient would be 0
        nn.init.normal_(model.heads.head.weight, std=0.05)
    layer, path = default_target_layer(model, name)
    adapter = ModelAdapter(name=name, model=model, class_names=[str(i) for i in range(10)], target_layer=layer,
                           target_layer_name=path, target_layout=target_layout(name, path))
    adapter.set_batch_sizes(forward=2, backward=2)
    return adapter


@pytest.mark.slow
@pytest.mark.parametrize(("name", "layer", "reshape"), [
    ("vit_b_16", "encoder.layers.encoder_layer_11.ln_1", _vit_reshape),
    ("swin_t", "norm", _swin_reshape),
])
def test_gradcam_matches_pytorch_grad_cam_on_transformers(name, layer, reshape):
    from pytorch_grad_cam import GradCAM as RefGradCAM
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    adapter = _random_zoo_adapter(name)
    assert adapter.target_layer_name == layer
    x = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    ours = GradCAM(adapter).attribute(x, torch.tensor([3])).maps.numpy()
    assert ours.shape == (1, 14, 14) if name == "vit_b_16" else (1, 7, 7)
    assert ours.max() > 0
    with RefGradCAM(model=adapter.model, target_layers=[adapter.target_layer], reshape_transform=reshape) as cam:
        ref = cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(3)])[0]
    mine = scale_cam_image(scale_cam_image(ours, (224, 224)), (224, 224))[0]  # its own upsampling for both
    assert np.corrcoef(mine.ravel(), ref.ravel())[0, 1] > 0.99
    assert np.abs(mine - ref).max() < 1e-4


@pytest.mark.slow
def test_cli_explains_vit_b_16_state_dict_with_gradcam(tmp_path):
    """``biasscope explain cat.png --model vit_b_16 --weights vit.pth --method gradcam`` (an IndexError
    before CAMs reshaped tokens): the written heatmap is our Grad-CAM of the reloaded model, resized."""
    from click.testing import CliRunner
    from PIL import Image
    from skimage import data

    from biasscope.cli import main
    from biasscope.models import load_model
    from biasscope.models.adapter import resize_map

    model = _random_zoo_adapter("vit_b_16").model
    sd = dict(model.state_dict())
    sd["heads.head.weight"] = torch.randn(1000, 768, generator=torch.Generator().manual_seed(2)) * 0.05
    sd["heads.head.bias"] = torch.zeros(1000)
    torch.save(sd, tmp_path / "vit.pth")
    img = Image.fromarray(data.chelsea()).resize((96, 64))
    img.save(tmp_path / "cat.png")
    res = CliRunner().invoke(main, ["explain", str(tmp_path / "cat.png"), "--model", "vit_b_16", "--weights",
                                    str(tmp_path / "vit.pth"), "--method", "gradcam", "--no-faithfulness",
                                    "--backend", "torch", "--target", "7", "--out", str(tmp_path / "out")])
    assert res.exit_code == 0, res.output
    heat = np.load(tmp_path / "out" / "gradcam.npy")
    adapter = load_model("vit_b_16", weights=tmp_path / "vit.pth", backend="torch")
    assert adapter.target_layout == "tokens"
    direct = GradCAM(adapter).attribute(adapter.preprocess(img), torch.tensor([7])).maps[0]
    assert direct.shape == (14, 14) and direct.max() > 0
    expected = resize_map(direct, (64, 96))
    # float rounding differs between the CLI's forward and this one (batching, attention kernels), and a
    # random ViT's gradients cancel over 12 blocks: 2% of the peak was seen at one pixel
    assert np.corrcoef(heat.ravel(), expected.ravel())[0, 1] > 0.999
    assert np.abs(heat - expected).max() < 5e-2 * expected.max()
