"""Hooks are always removed (after success, errors inside the forward and cancellation), shared
adapters give the same answers under concurrency, and methods that need hooks or ReLUs refuse
models without them with a clear message."""

from __future__ import annotations

import contextlib
import threading

import pytest
import torch

from biasscope.errors import CancelledError, MethodUnavailableError
from biasscope.explainers import get_explainer, list_explainers
from tests.fixtures import ExplodingNet, SmallReLUNet, SmoothNet, leftover_hooks, make_adapter

SIZE = 32
#: small budgets for whatever sampling/step parameters a method declares (keeps every method fast)
SMALL_BUDGETS = ("steps", "sample", "iter", "perturb", "evals")


def small_params(cls) -> dict:
    params = {}
    for p in cls.params:
        if p.type is int and any(k in p.name for k in SMALL_BUDGETS):
            params[p.name] = int(max(p.min or 1, min(p.default, 8)))
    return params


def method_names() -> list[str]:
    return sorted(cls.name for cls in list_explainers())


def _batch():
    x = torch.randn(2, 3, SIZE, SIZE, generator=torch.Generator().manual_seed(0))
    return x, torch.tensor([1, 3])


@pytest.fixture
def exploding():
    model = ExplodingNet(seed=1)
    return make_adapter(model, input_size=SIZE, num_classes=4, target_layer="features.4"), model


def test_every_gradient_method_is_covered():
    assert {"gradcam", "gradcampp", "guided_gradcam", "integrated_gradients", "smoothgrad", "gradient_shap"} <= set(
        method_names()
    )


@pytest.mark.parametrize("method", [m for m in method_names() if "attention" not in get_explainer(m).requires])
def test_no_hook_left_after_success_error_and_cancel(exploding, method):
    # (methods that need a transformer's attention: the same checks in test_attention_rollout.py)
    adapter, model = exploding
    cls = get_explainer(method)
    x, t = _batch()
    assert leftover_hooks(model) == []

    attr = cls(adapter, **small_params(cls)).attribute(x, t)
    assert torch.isfinite(attr.maps).all()
    assert leftover_hooks(model) == []

    # an exception raised inside the forward, after the CAM layer ran (its hook has fired)
    model.explode = True
    try:
        with pytest.raises(RuntimeError, match="boom inside forward"):
            cls(adapter, **small_params(cls)).attribute(x, t)
    finally:
        model.explode = False
    assert leftover_hooks(model) == [], method

    # a progress callback that cancels, at the first report and at a later one
    for cancel_at in (1, 2):
        calls = []

        def progress(fraction: float, calls=calls, cancel_at=cancel_at) -> None:
            calls.append(fraction)
            if len(calls) >= cancel_at:
                raise CancelledError("cancelled by the user")

        explainer = cls(adapter, **small_params(cls))
        if cancel_at == 1:  # every method reports progress, so every method can be cancelled
            with pytest.raises(CancelledError):
                explainer.run(x, t, progress=progress)
        else:
            with contextlib.suppress(CancelledError):
                explainer.run(x, t, progress=progress)
        assert leftover_hooks(model) == [], (method, cancel_at)
        assert explainer._progress is None  # the callback does not outlive the run

    # and the model still gives the same answer as before
    again = cls(adapter, **small_params(cls)).attribute(x, t)
    torch.testing.assert_close(again.maps, attr.maps, rtol=1e-5, atol=1e-5 * float(attr.maps.abs().max()))


def test_cancel_through_the_api_leaves_no_hook(exploding):
    from PIL import Image

    from biasscope.api import explain

    adapter, model = exploding
    img = Image.new("RGB", (40, 30), (120, 30, 200))

    def progress(method: str, fraction: float) -> None:
        if method == "guided_gradcam" and fraction > 0:
            raise CancelledError("stop")

    with pytest.raises(CancelledError):
        explain(adapter, img, ["gradcam", "guided_gradcam"], faithfulness=False, progress=progress)
    assert leftover_hooks(model) == []


def test_concurrent_explanations_on_one_adapter_equal_serial_results():
    # one shared adapter, as in the web server: hook-based methods (Grad-CAM, guided backprop,
    # which rewrites every ReLU's backward while it runs) must not leak into other threads' work
    model = SmallReLUNet(seed=3, width=32)
    adapter = make_adapter(model, input_size=64, num_classes=4, target_layer="features.4", batch_size=8)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(1))
    t = torch.tensor([0, 2])
    methods = ["gradcam", "guided_gradcam", "integrated_gradients"]
    params = {"integrated_gradients": {"steps": 16}}

    def run(method: str) -> torch.Tensor:
        return get_explainer(method)(adapter, **params.get(method, {})).attribute(x, t).maps

    serial = {m: run(m) for m in methods}
    results: dict[int, torch.Tensor] = {}
    errors: list[BaseException] = []
    start = threading.Barrier(8)

    def work(i: int) -> None:
        try:
            start.wait()
            for _ in range(2):
                results[i] = run(methods[i % 3])
                assert torch.equal(results[i], serial[methods[i % 3]]), methods[i % 3]
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(8)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    for i in range(8):
        assert torch.equal(results[i], serial[methods[i % 3]]), methods[i % 3]
    assert leftover_hooks(model) == []


@pytest.fixture
def torchscript_adapter(tmp_path):
    from biasscope.models import load_model

    eager = SmallReLUNet(seed=4)
    path = tmp_path / "tiny.pt"
    torch.jit.script(eager).save(str(path))
    adapter = load_model(path, labels=["a", "b", "c", "d"], input_size=SIZE, mean=(0, 0, 0), std=(1, 1, 1))
    adapter.set_batch_sizes(forward=8, backward=8)
    return adapter, eager


@pytest.mark.parametrize("method", ["gradcam", "gradcampp", "guided_gradcam"])
def test_torchscript_refuses_cam_methods_clearly(torchscript_adapter, method):
    adapter, _ = torchscript_adapter
    assert not adapter.supports_hooks
    cls = get_explainer(method)
    with pytest.raises(MethodUnavailableError, match=r"unavailable for .*TorchScript: layer-hook methods"):
        cls(adapter)
    assert "TorchScript" in cls.availability(adapter)


def test_torchscript_refusal_through_the_api(torchscript_adapter):
    from PIL import Image

    from biasscope.api import explain

    adapter, _ = torchscript_adapter
    with pytest.raises(MethodUnavailableError, match="Grad-CAM is unavailable"):
        explain(adapter, Image.new("RGB", (8, 8)), ["integrated_gradients", "gradcam"], faithfulness=False)


@pytest.mark.parametrize("method", ["integrated_gradients", "smoothgrad", "gradient_shap"])
def test_torchscript_gradient_methods_still_work(torchscript_adapter, method):
    adapter, eager = torchscript_adapter
    eager_adapter = make_adapter(eager, input_size=SIZE, num_classes=4)
    x, t = _batch()
    cls = get_explainer(method)
    params = small_params(cls)
    scripted = cls(adapter, **params).attribute(x, t)
    reference = cls(eager_adapter, **params).attribute(x, t)
    assert scripted.maps.abs().max() > 0
    torch.testing.assert_close(scripted.maps, reference.maps, rtol=1e-4, atol=1e-5)


def test_guided_gradcam_needs_relu_modules():
    smooth = make_adapter(SmoothNet(), input_size=16, num_classes=3, target_layer="conv2")
    with pytest.raises(MethodUnavailableError, match="needs ReLU activations"):
        get_explainer("guided_gradcam")(smooth)
    get_explainer("gradcam")(smooth)  # plain Grad-CAM is fine on the same model


def test_guided_gradcam_runs_on_relu6_mobilenet():
    from torchvision.models import mobilenet_v2

    model = mobilenet_v2(weights=None, num_classes=3)  # ReLU6 activations only (random weights: mechanics)
    adapter = make_adapter(model, input_size=32, num_classes=3, target_layer="features.18")
    cls = get_explainer("guided_gradcam")
    assert cls.availability(adapter) is None
    maps = cls(adapter).attribute(torch.randn(1, 3, 32, 32), torch.tensor([1])).maps
    assert maps.shape == (1, 32, 32) and torch.isfinite(maps).all()
