"""HiResCAM, LayerCAM, XGrad-CAM, Eigen-CAM and Score-CAM: maps computed on paper for the
hand-weighted conv net, and agreement with pytorch-grad-cam's implementations on the real
MobileNetV2 and on a random-initialised ViT (mechanics only for the ViT: no pretrained weights here)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biasscope.explainers import get_explainer
from tests.explainers.test_cams import X, conv_by_hand, grads_by_hand
from tests.fixtures import HandConvNet, make_adapter, mobilenet_v2_adapter, real_image_batch

METHODS = ["hirescam", "layercam", "xgradcam", "eigencam", "scorecam"]


# ---------------------------------------------------------------- on paper
def hand_logits(x: np.ndarray) -> np.ndarray:
    """HandConvNet's logits: ``sum(V_c * ReLU(A)) + b_c``."""
    A = np.maximum(conv_by_hand(x), 0)
    V = HandConvNet.HEAD.double().numpy()
    return np.array([(V[c] * A).sum() for c in range(2)]) + np.array([0.25, -0.25])


def upsample_aligned(m: np.ndarray, size: int) -> np.ndarray:
    """Bilinear upsampling with aligned corners, written out: output pixel ``i`` samples input
    coordinate ``i * (h - 1) / (size - 1)``."""
    h = m.shape[0]
    out = np.zeros((size, size))
    for i in range(size):
        for j in range(size):
            u, v = i * (h - 1) / (size - 1), j * (h - 1) / (size - 1)
            i0, j0 = min(int(u), h - 2), min(int(v), h - 2)
            du, dv = u - i0, v - j0
            out[i, j] = ((1 - du) * (1 - dv) * m[i0, j0] + (1 - du) * dv * m[i0, j0 + 1]
                         + du * (1 - dv) * m[i0 + 1, j0] + du * dv * m[i0 + 1, j0 + 1])
    return out


def hand_map(method: str, x: np.ndarray, target: int) -> np.ndarray:
    A = conv_by_hand(x)
    G = grads_by_hand(A, target)
    if method == "hirescam":
        return np.maximum((G * A).sum(0), 0)
    if method == "layercam":
        return np.maximum((np.maximum(G, 0) * A).sum(0), 0)
    if method == "xgradcam":
        w = np.array([(G[k] * A[k]).sum() / (A[k].sum() + 1e-7) for k in range(2)])
        return np.maximum((w[:, None, None] * A).sum(0), 0)
    if method == "eigencam":
        # first principal component of the 9 x 2 centred activations, from the 2x2 covariance
        M = A.reshape(2, 9).T
        M = M - M.mean(0)
        (a, b), (_, d) = M.T @ M
        lam = (a + d) / 2 + np.sqrt(((a - d) / 2) ** 2 + b**2)
        v = np.array([b, lam - a])
        p = M @ (v / np.linalg.norm(v))
        if abs(p.min()) > abs(p.max()):
            p = -p
        return np.maximum(p.reshape(3, 3), 0)
    if method == "scorecam":
        scores = []
        for k in range(2):
            up = upsample_aligned(A[k], 4)
            up = (up - up.min()) / (up.max() - up.min() + 1e-8)
            scores.append(hand_logits(x * up[None])[target])
        w = np.exp(scores) / np.exp(scores).sum()
        return np.maximum((w[:, None, None] * A).sum(0), 0)
    raise AssertionError(method)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("target", [0, 1])
def test_cam_equals_hand_computation(method, target):
    adapter = make_adapter(HandConvNet(), input_size=4, num_classes=2, target_layer="conv")
    X2 = X[:, ::-1, :].copy()
    x = torch.tensor(np.stack([X, X2]), dtype=torch.float32)
    maps = get_explainer(method)(adapter).attribute(x, torch.tensor([target, 1 - target])).maps.numpy()
    for got, xi, t in ((maps[0], X, target), (maps[1], X2, 1 - target)):
        expected = hand_map(method, xi, t)
        assert expected.max() > 0
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6 * expected.max())


def test_hand_maps_tell_the_methods_apart():
    # the oracle distinguishes every method from Grad-CAM and from each other on this input
    from tests.explainers.test_cams import gradcam_by_hand

    maps = {m: hand_map(m, X, 0) for m in METHODS} | {"gradcam": gradcam_by_hand(X, 0)}
    names = list(maps)
    for i, a in enumerate(names):
        for b in names[i + 1 :]:
            ma, mb = maps[a] / maps[a].max(), maps[b] / maps[b].max()
            assert not np.allclose(ma, mb, atol=1e-3), (a, b)


# ---------------------------------------------------------------- against pytorch-grad-cam
def _reference_classes():
    import pytorch_grad_cam as pgc

    return {"hirescam": pgc.HiResCAM, "layercam": pgc.LayerCAM, "xgradcam": pgc.XGradCAM,
            "eigencam": pgc.EigenCAM, "scorecam": pgc.ScoreCAM}


def _compare(method, adapter, x, targets, reshape=None):
    """Our maps vs pytorch-grad-cam's on each image, both through its own min-max + resize pipeline."""
    from pytorch_grad_cam.utils.image import scale_cam_image
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget
    from pytorch_grad_cam.utils.svd_on_activations import (
        get_2d_projection,
        get_2d_projection_with_sign_correction,
    )

    ours = get_explainer(method)(adapter).attribute(x, targets).maps.numpy()
    size = (x.shape[-1], x.shape[-2])
    for i in range(x.shape[0]):
        assert ours[i].max() > 0
        cls = _reference_classes()[method]
        with cls(model=adapter.model, target_layers=[adapter.target_layer], reshape_transform=reshape) as cam:
            cam.batch_size = 64
            ref = cam(input_tensor=x[i : i + 1].clone().requires_grad_(True),
                      targets=[ClassifierOutputTarget(int(targets[i]))])[0]
            acts = cam.activations_and_grads.activations[0].numpy()
        mine = scale_cam_image(scale_cam_image(ours[i : i + 1], size), size)[0]
        if method == "eigencam":
            # its EigenCAM keeps whatever sign the SVD returns; we correct the sign as its
            # get_2d_projection_with_sign_correction does: compare with that on its activations
            corrected = np.maximum(get_2d_projection_with_sign_correction(acts), 0)[0]
            np.testing.assert_allclose(ours[i], corrected, rtol=1e-3, atol=1e-4 * corrected.max())
            if np.allclose(get_2d_projection(acts)[0], get_2d_projection_with_sign_correction(acts)[0]):
                assert np.corrcoef(mine.ravel(), ref.ravel())[0, 1] > 0.99
            continue
        corr = np.corrcoef(mine.ravel(), ref.ravel())[0, 1]
        assert corr > 0.99, (method, i, corr)


@pytest.mark.slow
@pytest.mark.parametrize("method", [m for m in METHODS if m != "scorecam"])
def test_matches_pytorch_grad_cam_on_mobilenet_v2(method):
    adapter = mobilenet_v2_adapter()
    x, targets = real_image_batch(adapter)
    _compare(method, adapter, x, targets)


@pytest.mark.slow
def test_scorecam_matches_pytorch_grad_cam_on_mobilenet_v2():
    # 1,280 masked forwards per image: the real model at 112 x 112 keeps this affordable
    from tests.fixtures import small_mobilenet_v2_chelsea

    adapter, x, target = small_mobilenet_v2_chelsea()
    _compare("scorecam", adapter, x, torch.tensor([target]))


def small_random_vit():
    """A random-initialised torchvision ViT (32x32 input, 8x8 patches: 16 patch tokens + class token)."""
    from torchvision.models.vision_transformer import VisionTransformer

    torch.manual_seed(0)
    model = VisionTransformer(image_size=32, patch_size=8, num_layers=2, num_heads=2, hidden_dim=32,
                              mlp_dim=64, num_classes=5)
    torch.nn.init.normal_(model.heads.head.weight, std=0.5)  # torchvision zero-initialises it
    return model


def _vit_reshape(tensor):
    return tensor[:, 1:, :].reshape(tensor.size(0), 4, 4, tensor.size(2)).transpose(2, 3).transpose(1, 2)


@pytest.mark.parametrize("method", METHODS)
def test_matches_pytorch_grad_cam_on_random_vit(method):
    adapter = make_adapter(small_random_vit(), input_size=32, num_classes=5,
                           target_layer="encoder.layers.encoder_layer_1.ln_1", batch_size=8)
    x = torch.randn(2, 3, 32, 32, generator=torch.Generator().manual_seed(4))
    _compare(method, adapter, x, torch.tensor([1, 3]), reshape=_vit_reshape)
