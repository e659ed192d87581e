"""ONNX Runtime backend for gradient-free forwards: equal to PyTorch, checked, lazy, with fallbacks."""

from __future__ import annotations

import pickle
import re
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from skimage import data
from torch import nn

from biasscope.errors import ModelError
from biasscope.images import load_image
from biasscope.models import ModelAdapter, load_model
from biasscope.models import ort as ort_mod
from biasscope.models.ort import MIN_WORK


def _net(seed: int = 0, classes: int = 5) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(8, classes),
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
    assert ours.to_dict()["backend"]["reason"].startswith("exported graph matches PyTorch")
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

    monkeypatch.setattr("biasscope.models.ort.OrtRunner", Wrong)
    x = torch.randn(MIN_WORK, 3, 16, 16)
    auto = _adapter(_net(), "auto")
    torch.testing.assert_close(auto.probabilities(x), _adapter(_net(), "torch").probabilities(x))
    d = auto.to_dict()["backend"]
    assert d["active"] == "torch" and "disagrees" in d["reason"]
    with pytest.raises(ModelError, match=r"onnxruntime is not usable.*disagrees"):
        _adapter(_net(), "onnxruntime").probabilities(x)


def test_missing_onnxruntime_is_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("biasscope.models.ort.ort_available", lambda: False)
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


# ---------------------------------------------------------------- the user's own .onnx file


class LabelFirst(nn.Module):
    """A graph whose first output is the predicted label, not the logits."""

    def __init__(self) -> None:
        super().__init__()
        self.net = _net()

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        logits = self.net(x)
        return logits.argmax(1), logits


def _onnx_file(path: Path, model: nn.Module, batch: int | None) -> Path:
    """Export ``model`` to ``path``: a symbolic batch axis (``batch=None``) or a fixed batch size."""
    n_out = 2 if isinstance(model, LabelFirst) else 1
    outputs = [f"y{i}" for i in range(n_out)]
    axes = {"x": {0: "n"}, **{o: {0: "n"} for o in outputs}} if batch is None else None
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(
            model.eval(),
            (torch.zeros(batch or 2, 3, 16, 16),),
            str(path),
            input_names=["x"],
            output_names=outputs,
            dynamic_axes=axes,
            dynamo=False,
            opset_version=17,
        )
    return path


def _declared_batch(path: Path) -> int | str:
    dim = onnx.load(str(path)).graph.input[0].type.tensor_type.shape.dim[0]
    return dim.dim_value if dim.HasField("dim_value") else dim.dim_param


@pytest.mark.parametrize("backend", ["auto", "onnxruntime"])
@pytest.mark.parametrize("batch", [None, 1, 3])
def test_original_onnx_file_runs_and_equals_torch(tmp_path: Path, batch: int | None, backend: str) -> None:
    path = _onnx_file(tmp_path / "net.onnx", _net(), batch)
    assert _declared_batch(path) == (batch or "n")  # the file really has the batch axis asked for
    ours = load_model(path, backend=backend)
    ref = load_model(path, backend="torch")
    assert ours.onnx_source == path.read_bytes() and ref.onnx_source is None
    x = torch.randn(20, 3, 16, 16)
    # chunks of 7 through a graph with a fixed batch of 3: 3 + 3 + 1 padded, and so on
    got, want = ours.probabilities(x, batch_size=7), ref.probabilities(x, batch_size=7)
    d = ours.to_dict()["backend"]
    assert d["active"] == "onnxruntime" and d["reason"].startswith("original ONNX file matches PyTorch"), d
    assert ours._ort.runner.fixed_batch == batch
    assert got.shape == (20, 5) and float((got - want).abs().max()) < 1e-4
    assert torch.equal(got.argmax(1), want.argmax(1))
    # and the PyTorch path of the same adapter (the onnx2torch module) agrees too
    torch.testing.assert_close(torch.softmax(ours.logits(x), dim=1), got, atol=1e-4, rtol=0)


def test_fixed_batch_runner_pads_the_last_chunk(tmp_path: Path) -> None:
    model = _net()
    fixed = ort_mod.OrtRunner(_onnx_file(tmp_path / "b3.onnx", model, 3).read_bytes())
    dynamic = ort_mod.OrtRunner(_onnx_file(tmp_path / "bn.onnx", model, None).read_bytes())
    assert fixed.fixed_batch == 3 and dynamic.fixed_batch is None
    x = torch.randn(7, 3, 16, 16)
    with torch.no_grad():
        want = model(x)
    for runner in (fixed, dynamic):
        torch.testing.assert_close(runner.logits(x), want, atol=1e-5, rtol=1e-4)
        torch.testing.assert_close(runner.logits(x[:1]), want[:1], atol=1e-5, rtol=1e-4)
    assert fixed.logits(x[:0]).shape == (0, 5)
    with pytest.raises(ValueError, match="input shape"):
        fixed.logits(torch.randn(3, 3, 20, 20))  # the file's fixed 16x16 is checked, not left to fail later


@pytest.mark.parametrize(
    ("other", "why"),
    [
        (lambda: _net(seed=1), "original ONNX file not used: ONNX Runtime disagrees with PyTorch"),
        (lambda: _net(classes=6), r"original ONNX file not used: its output has shape \[8, 6\], PyTorch's \[8, 5\]"),
        (
            LabelFirst,
            r"original ONNX file not used: ONNX Runtime cannot run it \(ValueError: the graph's first output",
        ),
    ],
    ids=["other-weights", "other-classes", "label-first"],
)
def test_original_file_that_disagrees_falls_back_to_export(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, other: Callable[[], nn.Module], why: str
) -> None:
    path = _onnx_file(tmp_path / "net.onnx", _net(), None)
    wrong = _onnx_file(tmp_path / "other.onnx", other(), None).read_bytes()
    # the loader hands the adapter a file that is not the one converted to PyTorch
    monkeypatch.setattr("biasscope.models.loader.onnx_file_bytes", lambda _p: wrong)
    ours, ref = load_model(path, backend="auto"), load_model(path, backend="torch")
    assert ours.onnx_source == wrong
    x = torch.randn(MIN_WORK, 3, 16, 16)
    got = ours.probabilities(x, batch_size=8)
    d = ours.to_dict()["backend"]
    assert d["active"] == "onnxruntime"
    assert re.match(why + r".*; exported graph matches PyTorch on 8 images", d["reason"]), d["reason"]
    assert float((got - ref.probabilities(x, batch_size=8)).abs().max()) < 1e-4

    # with the export failing too (and no export of this model in the cache), PyTorch it is, and both
    # reasons are kept
    def no_export(*_a: object) -> bytes:
        raise RuntimeError("no exporter here")

    monkeypatch.setattr("biasscope.models.ort.export_onnx", no_export)
    monkeypatch.setenv("BIASSCOPE_CACHE_DIR", str(tmp_path / "empty-cache"))
    auto = load_model(path, backend="auto")
    torch.testing.assert_close(auto.probabilities(x, batch_size=8), ref.probabilities(x, batch_size=8))
    d = auto.to_dict()["backend"]
    assert d["active"] == "torch"
    assert re.match(
        why + r".*; exported graph not used: export to ONNX failed .*no exporter here.*; using PyTorch$", d["reason"]
    )
    with pytest.raises(ModelError, match=r"onnxruntime is not usable.*original ONNX file not used.*no exporter here"):
        load_model(path, backend="onnxruntime").probabilities(x, batch_size=8)


def test_original_file_with_external_weights(tmp_path: Path) -> None:
    path = _onnx_file(tmp_path / "net.onnx", _net(), None)
    proto = onnx.load(str(path))
    split = tmp_path / "split" / "net.onnx"
    split.parent.mkdir()
    onnx.save_model(proto, str(split), save_as_external_data=True, location="net.weights", size_threshold=0)
    assert (split.parent / "net.weights").is_file() and len(split.read_bytes()) < len(path.read_bytes())
    ours = load_model(split, backend="onnxruntime")
    assert len(ours.onnx_source) > len(split.read_bytes())  # the weights were inlined
    x = torch.randn(MIN_WORK, 3, 16, 16)
    got = ours.probabilities(x, batch_size=8)
    assert ours.to_dict()["backend"]["reason"].startswith("original ONNX file matches PyTorch")
    torch.testing.assert_close(got, load_model(path, backend="torch").probabilities(x, batch_size=8), atol=1e-4, rtol=0)


def test_pickled_onnx_adapter_runs_the_original_file_again(tmp_path: Path) -> None:
    path = _onnx_file(tmp_path / "net.onnx", _net(), 1)
    ad = load_model(path, backend="auto")
    x = torch.randn(MIN_WORK, 3, 16, 16)
    want = ad.probabilities(x, batch_size=8)
    path.unlink()  # where the adapter lands, the file need not exist
    copy = pickle.loads(pickle.dumps(ad))
    assert copy.active_backend == "torch" and copy.onnx_source == ad.onnx_source
    torch.testing.assert_close(copy.probabilities(x, batch_size=8), want, atol=1e-6, rtol=1e-5)
    assert copy.to_dict()["backend"]["reason"].startswith("original ONNX file matches PyTorch")


def test_warm_up_builds_the_engine_and_measures_its_batch_sizes(monkeypatch: pytest.MonkeyPatch) -> None:
    """What a server does at start-up: afterwards a user's first job pays for no export or measurement."""
    from biasscope.models import batching

    monkeypatch.delenv("BIASSCOPE_BATCH_SIZE", raising=False)
    batching._CACHE.clear()
    engines: list[str] = []
    real_run = batching._run

    def counting_run(adapter, x, backward, engine=None) -> None:
        engines.append("backward" if backward else type(engine).__name__ if engine is not None else "torch")
        real_run(adapter, x, backward, engine)

    monkeypatch.setattr(batching, "_run", counting_run)
    ad = _adapter(_net(), "auto")
    ad.warm_up()
    assert ad.active_backend == "onnxruntime"
    assert set(ad.batch_sizes) == {"forward", "forward:onnxruntime", "backward"}
    assert {"OrtRunner", "torch", "backward"} <= set(engines)
    n = len(engines)
    ad.probabilities(torch.randn(40, 3, 16, 16))
    assert len(engines) == n  # nothing measured during the job
    torch_only = _adapter(_net(), "torch")
    torch_only.warm_up()
    assert torch_only.active_backend == "torch" and set(torch_only.batch_sizes) == {"forward", "backward"}


class NearTie(nn.Module):
    """Logits near 1000 that differ by 0.5: bf16 (8-bit mantissa) rounds them together, fp32 does not."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(3, 2)
        with torch.no_grad():
            self.fc.weight.copy_(torch.tensor([[0.0, 0.0, 0.0], [0.5, 0.0, 0.0]]))
            self.fc.bias.copy_(torch.tensor([1000.0, 1000.0]))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.mean(dim=(2, 3)))


def _checked(model: nn.Module, classes: int, check: bool = True) -> ModelAdapter:
    return ModelAdapter(name="m", model=model, class_names=[f"c{i}" for i in range(classes)], input_size=8,
                        fast_dtype=torch.bfloat16, check_fast=check, backend="torch")


def test_checked_reduced_precision_is_dropped_where_it_disagrees_with_fp32() -> None:
    x = torch.ones(20, 3, 8, 8)  # fp32: logits 1000, 1000.5 -> p = 0.38, 0.62; bf16: 1000, 1000 -> 0.5, 0.5
    ad = _checked(NearTie(), 2)
    p = ad.probabilities(x)
    assert ad.fast_dtype is None and not ad.fast_forwards(x)
    info = ad.to_dict()["precision"]
    assert info["requested"] == "auto" and info["active"] == "fp32" and "disagrees with fp32" in info["reason"]
    with torch.no_grad():
        torch.testing.assert_close(p, torch.softmax(NearTie()(x), 1))  # the answer is fp32's, not bf16's
    unchecked = _checked(NearTie(), 2, check=False)  # an explicit bf16 request is honoured as asked
    assert (unchecked.probabilities(x) - 0.5).abs().max() < 1e-6 and unchecked.fast_dtype is torch.bfloat16
    assert unchecked.to_dict()["precision"]["reason"] == ""


def test_checked_reduced_precision_is_kept_where_it_agrees_and_survives_pickling() -> None:
    ad = _checked(_net(), 5)
    x = torch.rand(20, 3, 8, 8)
    p = ad.probabilities(x)
    assert ad.fast_dtype is torch.bfloat16 and ad.fast_forwards()
    assert "bf16 matches fp32 on 28 representative photos" in ad.to_dict()["precision"]["reason"]
    with torch.no_grad():
        assert float((p - torch.softmax(ad.model(x), 1)).abs().max()) <= 5e-3
    copy = pickle.loads(pickle.dumps(ad))
    assert copy.fast_dtype is torch.bfloat16 and not copy._fast.pending and copy.to_dict()["precision"] == ad.to_dict()[
        "precision"]
    torch.testing.assert_close(copy.probabilities(x), p)


def test_load_model_checks_only_the_auto_choice(monkeypatch: pytest.MonkeyPatch) -> None:
    from biasscope.models import loader

    monkeypatch.setattr(loader, "resolve_precision", lambda precision, device: torch.bfloat16)
    auto = load_model("mobilenet_v2", precision="auto", backend="torch")
    asked = load_model("mobilenet_v2", precision="bf16", backend="torch")
    assert auto.check_fast and auto._fast.pending and not asked.check_fast
    assert auto.to_dict()["precision"]["requested"] == "auto" and asked.to_dict()["precision"]["requested"] == "bf16"
    monkeypatch.setattr(loader, "resolve_precision", lambda precision, device: None)
    plain = load_model("mobilenet_v2", precision="auto", backend="torch")
    info = plain.to_dict()["precision"]
    assert info["active"] == "fp32" and not plain._fast.pending and "no native reduced precision" in info["reason"]


def test_an_export_is_reused_by_the_next_process_and_checked_like_a_fresh_one(
    monkeypatch: pytest.MonkeyPatch, _private_cache_dir: Path
) -> None:
    """The export (seconds for a real model) is kept in the persistent cache, keyed by the weights."""
    x = torch.randn(MIN_WORK, 3, 16, 16)
    first = _adapter(_net(), "auto")
    want = first.probabilities(x, batch_size=8)
    assert first.active_backend == "onnxruntime" and "reused" not in first.to_dict()["backend"]["reason"]
    (stored,) = (_private_cache_dir / "onnx").glob("*.onnx")

    def no_export(*_a: object) -> bytes:
        raise AssertionError("exported again")

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("biasscope.models.ort.export_onnx", no_export)
        again = _adapter(_net(), "auto")  # same weights, another process's fresh adapter
        torch.testing.assert_close(again.probabilities(x, batch_size=8), want)
        assert again.active_backend == "onnxruntime"
        assert again.to_dict()["backend"]["reason"].endswith("(export reused from the cache)")
    calls: list[int] = []
    real = ort_mod.export_onnx

    def counting(*a: object) -> bytes:
        calls.append(1)
        return real(*a)

    monkeypatch.setattr("biasscope.models.ort.export_onnx", counting)
    other = _adapter(_net(seed=3), "auto")  # other weights: exported anew, never the stored graph
    with torch.no_grad():
        torch.testing.assert_close(other.probabilities(x, batch_size=8), torch.softmax(_net(seed=3).eval()(x), 1),
                                   atol=1e-5, rtol=1e-4)
    assert calls == [1] and len(list((_private_cache_dir / "onnx").glob("*.onnx"))) == 2
    stored.write_bytes(b"not a graph")  # a corrupt entry: refused by ONNX Runtime, exported again
    broken = _adapter(_net(), "auto")
    torch.testing.assert_close(broken.probabilities(x, batch_size=8), want, atol=1e-6, rtol=1e-5)
    assert calls == [1, 1] and broken.active_backend == "onnxruntime"
    assert onnx.load_from_string(stored.read_bytes()).graph.node  # replaced by a valid graph


def _tiny_vit() -> nn.Module:
    """A torchvision ViT small enough for a unit test (its encoder uses fused nn.MultiheadAttention)."""
    from torchvision.models import VisionTransformer

    torch.manual_seed(0)
    return VisionTransformer(image_size=32, patch_size=16, num_layers=1, num_heads=2, hidden_dim=8, mlp_dim=16,
                             num_classes=5).eval()


def test_auto_skips_export_of_fused_attention_and_prints_nothing(capfd) -> None:
    """torchvision ViTs cannot be exported at opset 17: auto stays on PyTorch with the reason, silently."""
    vit = _tiny_vit()
    ad = ModelAdapter(name="vit", model=vit, class_names=[f"c{i}" for i in range(5)], input_size=32,
                      backend="auto")
    x = torch.randn(MIN_WORK, 3, 32, 32)
    got = ad.probabilities(x)
    d = ad.to_dict()["backend"]
    assert d["active"] == "torch" and d["reason"] == ort_mod.MHA_REASON
    with torch.no_grad():
        torch.testing.assert_close(got, torch.softmax(vit(x), dim=1))
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_failed_export_prints_nothing(capfd) -> None:
    """A failing export (here the fused-attention ViT, asked directly) raises; the exporter's graph dump
    (kilobytes on the C++ stdout) and warnings never reach the terminal, and the descriptors are restored."""
    with pytest.raises(Exception, match="_native_multi_head_attention"):
        ort_mod.export_onnx(_tiny_vit(), 32)
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    print("after")  # stdout works again after the export
    assert capfd.readouterr().out == "after\n"
