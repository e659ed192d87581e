"""Grad-CAM and Grad-CAM++: hand-computed maps on a hand-weighted conv net, and agreement with
pytorch-grad-cam on real MobileNetV2 at the same layer."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biasscope.explainers import get_explainer
from biasscope.explainers.gradcam import GradCAM
from biasscope.explainers.gradcampp import GradCAMPlusPlus
from tests.fixtures import HandConvNet, make_adapter, mobilenet_v2_adapter, real_image_batch

# a fixed 4x4 RGB input with small integer values (so the conv output is exact in float32)
X = np.array(
    [
        [[1, 0, 2, -1], [0, 3, 1, 0], [-2, 1, 0, 2], [1, 1, -1, 0]],
        [[0, 2, -1, 1], [1, -1, 0, 2], [2, 0, 1, -1], [0, 1, 1, 1]],
        [[1, 1, 0, 0], [-1, 2, 1, 0], [0, -1, 2, 1], [1, 0, 0, -2]],
    ],
    dtype=np.float64,
)


def conv_by_hand(x: np.ndarray) -> np.ndarray:
    """HandConvNet's conv layer with explicit loops: ``A[k, i, j]``."""
    K = HandConvNet.KERNEL.double().numpy()
    b = HandConvNet.BIAS.double().numpy()
    A = np.zeros((2, 3, 3))
    for k in range(2):
        for i in range(3):
            for j in range(3):
                A[k, i, j] = b[k] + sum(
                    K[k, c, u, v] * x[c, i + u, j + v] for c in range(3) for u in range(2) for v in range(2)
                )
    return A


def grads_by_hand(acts: np.ndarray, target: int) -> np.ndarray:
    """``d logit_target / d A``: the head weight where the ReLU passes, else 0."""
    V = HandConvNet.HEAD.double().numpy()[target]
    return V * (acts > 0)


def gradcam_by_hand(x: np.ndarray, target: int) -> np.ndarray:
    A = conv_by_hand(x)
    G = grads_by_hand(A, target)
    w = G.mean(axis=(1, 2))
    return np.maximum((w[:, None, None] * A).sum(0), 0)


def gradcampp_by_hand(x: np.ndarray, target: int) -> np.ndarray:
    """Chattopadhyay et al. eq. 19 with the exponential-score closed form (as pytorch-grad-cam)."""
    A = conv_by_hand(x)
    G = grads_by_hand(A, target)
    w = np.zeros(2)
    for k in range(2):
        s = A[k].sum()
        for i in range(3):
            for j in range(3):
                g = G[k, i, j]
                if g != 0:
                    assert 2 * g**2 + s * g**3 != 0, "degenerate input: the closed-form alpha is undefined"
                    alpha = g**2 / (2 * g**2 + s * g**3)
                    w[k] += alpha * max(g, 0.0)
    return np.maximum((w[:, None, None] * A).sum(0), 0)


@pytest.fixture
def hand_adapter():
    return make_adapter(HandConvNet(), input_size=4, num_classes=2, target_layer="conv")


def test_hand_input_exercises_relu_mask():
    # the oracle is only interesting if some activations are negative (gradient masked) and both
    # channels matter; guard the fixture against edits that make it trivial
    A = conv_by_hand(X)
    assert (A < 0).any() and (A > 0).any()
    for t in (0, 1):
        m = gradcam_by_hand(X, t)
        assert (m > 0).any() and (m == 0).any()


@pytest.mark.parametrize("target", [0, 1])
def test_gradcam_equals_hand_computation(hand_adapter, target):
    x = torch.tensor(X, dtype=torch.float32)[None]
    maps = GradCAM(hand_adapter).attribute(x, torch.tensor([target])).maps
    assert maps.shape == (1, 3, 3)
    np.testing.assert_allclose(maps[0].numpy(), gradcam_by_hand(X, target), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("target", [0, 1])
def test_gradcampp_equals_hand_computation(hand_adapter, target):
    x = torch.tensor(X, dtype=torch.float32)[None]
    maps = GradCAMPlusPlus(hand_adapter).attribute(x, torch.tensor([target])).maps
    expected = gradcampp_by_hand(X, target)
    np.testing.assert_allclose(maps[0].numpy(), expected, rtol=1e-5, atol=1e-6)
    # Grad-CAM++ weights differ from Grad-CAM's here, so the test tells the two apart
    plain = gradcam_by_hand(X, target)
    assert not np.allclose(expected / expected.max(), plain / plain.max())


def test_cams_batch_images_independently(hand_adapter):
    # two images with different targets in one batch give each image's own single-image map
    X2 = X[:, ::-1, :].copy()
    x = torch.tensor(np.stack([X, X2]), dtype=torch.float32)
    for cls, oracle in ((GradCAM, gradcam_by_hand), (GradCAMPlusPlus, gradcampp_by_hand)):
        maps = cls(hand_adapter).attribute(x, torch.tensor([0, 1])).maps.numpy()
        np.testing.assert_allclose(maps[0], oracle(X, 0), rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(maps[1], oracle(X2, 1), rtol=1e-5, atol=1e-6)


def test_api_heatmap_is_upsampled_hand_map(hand_adapter):
    # through the public API: the map comes back at the image's own size, bilinearly resized
    from PIL import Image

    from biasscope.api import explain
    from biasscope.models.adapter import resize_map

    x01 = np.clip((X + 2) / 5, 0, 1)  # an image whose preprocessing (mean 0, std 1) is exact enough
    img = Image.fromarray(np.round(x01.transpose(1, 2, 0) * 255).astype(np.uint8))
    x = hand_adapter.preprocess(img)
    exp = explain(hand_adapter, img, ["gradcam"], target=1, faithfulness=False)["gradcam"]
    hand = gradcam_by_hand(x[0].double().numpy(), 1)
    np.testing.assert_allclose(exp.model_heatmap, resize_map(hand, (4, 4)), rtol=1e-5, atol=1e-5)
    assert exp.heatmap.shape == (4, 4) and exp.target == 1 and not exp.signed




def test_explain_batch_reuses_a_callers_inputs_and_probabilities(hand_adapter):
    # the audit runner passes its own model batch and probabilities: same explanations, no second forward
    from PIL import Image

    from biasscope.api import explain_batch
    from biasscope.errors import BiasscopeError

    rng = np.random.default_rng(0)
    imgs = [Image.fromarray(rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)) for _ in range(3)]
    x = hand_adapter.preprocess(imgs)
    probs = hand_adapter.probabilities(x)
    plain = explain_batch(hand_adapter, imgs, ["gradcam"], faithfulness=False)
    calls = []
    forward = hand_adapter.probabilities
    hand_adapter.probabilities = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        reused = explain_batch(hand_adapter, imgs, ["gradcam"], faithfulness=False, inputs=x, probabilities=probs)
    finally:
        del hand_adapter.probabilities
    assert calls == []
    for a, b in zip(plain, reused):
        np.testing.assert_array_equal(a["gradcam"].heatmap, b["gradcam"].heatmap)
        assert a["gradcam"].target == b["gradcam"].target
        assert a["gradcam"].target_probability == b["gradcam"].target_probability
    with pytest.raises(BiasscopeError, match="do not match"):
        explain_batch(hand_adapter, imgs, ["gradcam"], inputs=x[:2], probabilities=probs[:2])
# ---------------------------------------------------------------- real MobileNetV2 vs pytorch-grad-cam


def _reference_cam(ref_cls, adapter, x, target):
    """pytorch-grad-cam's upsampled map for one image, and the activations/gradients it used."""
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    with ref_cls(model=adapter.model, target_layers=[adapter.target_layer]) as cam:
        out = cam(input_tensor=x.clone().requires_grad_(True), targets=[ClassifierOutputTarget(int(target))])
        acts = cam.activations_and_grads.activations[0].double().numpy()
        grads = cam.activations_and_grads.gradients[0].double().numpy()
    return out[0], acts[0], grads[0]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["gradcam", "gradcampp"])
def test_matches_pytorch_grad_cam_on_mobilenet_v2(method):
    from pytorch_grad_cam import GradCAM as RefGradCAM
    from pytorch_grad_cam import GradCAMPlusPlus as RefGradCAMPlusPlus
    from pytorch_grad_cam.utils.image import scale_cam_image

    adapter = mobilenet_v2_adapter()
    assert adapter.target_layer_name == "features.18"
    x, targets = real_image_batch(adapter)
    ours = get_explainer(method)(adapter).attribute(x, targets).maps.numpy()
    assert ours.shape == (x.shape[0], 7, 7)
    ref_cls = RefGradCAM if method == "gradcam" else RefGradCAMPlusPlus
    for i in range(x.shape[0]):
        ref, acts, grads = _reference_cam(ref_cls, adapter, x[i : i + 1], targets[i])
        # the same upsampling for both: pytorch-grad-cam's own pipeline, which min-max scales and
        # cv2-resizes each layer's map, then min-max scales the aggregate once more
        size = (x.shape[-1], x.shape[-2])
        mine = scale_cam_image(scale_cam_image(ours[i : i + 1], size), size)[0]
        corr = np.corrcoef(mine.ravel(), ref.ravel())[0, 1]
        assert corr > 0.99, corr
        if method == "gradcam":
            assert np.abs(mine - ref).max() < 1e-4
        else:
            # pytorch-grad-cam adds eps=1e-6 to the alpha denominator; MobileNetV2's gradients
            # here are ~1e-3, so g^2 ~ eps and its maps differ by a few percent (corr 0.9989 and
            # 0.9998 measured). Without the eps, its formula on its own activations and
            # gradients gives our map:
            g2, g3 = grads**2, grads**3
            denom = 2 * g2 + acts.sum(axis=(1, 2), keepdims=True) * g3
            alpha = np.where(grads != 0, g2 / np.where(denom != 0, denom, 1.0), 0.0)
            w = (alpha * np.maximum(grads, 0)).sum(axis=(1, 2))
            expected = np.maximum((w[:, None, None] * acts).sum(0), 0)
            np.testing.assert_allclose(ours[i], expected, rtol=1e-4, atol=1e-6 * expected.max())


def test_guided_gradcam_equals_captum():
    import copy

    from captum.attr import GuidedGradCam

    from biasscope.explainers.guided_gradcam import GuidedGradCAM
    from tests.fixtures import SmallReLUNet

    model = SmallReLUNet(seed=7)
    adapter = make_adapter(model, input_size=16, num_classes=4, target_layer="features.4")
    x = torch.randn(2, 3, 16, 16, generator=torch.Generator().manual_seed(3))
    t = torch.tensor([2, 0])
    ours = GuidedGradCAM(adapter).attribute(x, t).maps
    ref_model = copy.deepcopy(model)
    for m in ref_model.modules():  # Captum's backward hooks refuse in-place ReLUs; same function
        if isinstance(m, torch.nn.ReLU):
            m.inplace = False
    ref = GuidedGradCam(ref_model, ref_model.features[4]).attribute(
        x.clone().requires_grad_(True), target=t, interpolate_mode="bilinear"
    )
    ref_map = ref.sum(1).detach()
    assert ref_map.abs().max() > 0
    torch.testing.assert_close(ours, ref_map, rtol=1e-4, atol=1e-6 * float(ref_map.abs().max()))


class _ReLU6AsReLU(torch.nn.ReLU):
    """ReLU6 that Captum treats as a ReLU (its guided rule hooks ``nn.ReLU`` modules only)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.clamp(x, 0.0, 6.0)


def _captum_relu6_copy(model: torch.nn.Module) -> torch.nn.Module:
    import copy

    ref = copy.deepcopy(model)
    for parent in ref.modules():
        for name, child in parent.named_children():
            if isinstance(child, torch.nn.ReLU6):
                setattr(parent, name, _ReLU6AsReLU())
    return ref


def test_guided_backprop_through_relu6_equals_captum():
    """ReLU6 passes gradient only where 0 < x < 6: a net scaled so that many activations pass 6 checks the
    upper cut too (Captum's GuidedBackprop on the same net with ReLU6 as an nn.ReLU subclass)."""
    from captum.attr import GuidedBackprop

    from biasscope.explainers.guided_gradcam import guided_backprop
    from tests.fixtures import SmallReLUNet

    model = SmallReLUNet(seed=5)
    for i in (1, 3, 5):
        model.features[i] = torch.nn.ReLU6(inplace=(i == 3))
    with torch.no_grad():
        for conv in (model.features[0], model.features[2], model.features[4]):
            conv.weight.mul_(4.0)
    adapter = make_adapter(model, input_size=16, num_classes=4, target_layer="features.4")
    x = torch.randn(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    acts = model.features[:2](x)
    assert (acts >= 6).float().mean() > 0.05  # the upper cut is exercised
    t = torch.tensor([0, 3, 1])
    explainer = get_explainer("guided_gradcam")(adapter)
    ours = guided_backprop(explainer, x, t)
    ref = GuidedBackprop(_captum_relu6_copy(model)).attribute(x.clone().requires_grad_(True), target=t).detach()
    assert ref.abs().max() > 0
    torch.testing.assert_close(ours, ref, rtol=1e-4, atol=1e-6 * float(ref.abs().max()))


@pytest.mark.slow
def test_guided_gradcam_on_real_mobilenet_v2_equals_captum():
    """The real MobileNetV2 (ReLU6 throughout) against Captum's GuidedGradCam on two real photos."""
    from captum.attr import GuidedGradCam

    adapter = mobilenet_v2_adapter()
    x, t = real_image_batch(adapter)
    ours = get_explainer("guided_gradcam")(adapter).attribute(x, t).maps
    ref_model = _captum_relu6_copy(adapter.model).eval()
    ref = GuidedGradCam(ref_model, ref_model.features[18]).attribute(
        x.clone().requires_grad_(True), target=t, interpolate_mode="bilinear").sum(1).detach()
    assert ref.abs().max() > 0
    for i in range(x.shape[0]):  # per image: maps differ in scale
        scale = float(ref[i].abs().max())
        torch.testing.assert_close(ours[i], ref[i], rtol=1e-3, atol=1e-4 * scale)
