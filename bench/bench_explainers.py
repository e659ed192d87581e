"""Side-by-side speed and quality of biasscope's explainers against the reference libraries.

Every method runs ours and the reference implementation in ONE process, on the same model weights
and images, interleaved (round r: ours, reference, ...; the order flips every round) after an
untimed warm-up; medians are compared as ratios ``ours / reference`` (below 1 = we are faster).
The machine's load average is recorded next to every method, because shared machines are noisy:
compare ratios, never absolute times between runs.

Quality next to speed: for the sampling methods (LIME, Kernel SHAP) the superpixel weights are
compared (Spearman rank correlation) with a high-sample fp32 reference on the same superpixels,
on a model with real weights (``--quality-model``, default the real ImageNet MobileNetV2).

Examples::

    .venv/bin/python bench/bench_explainers.py                        # all methods, ResNet-18, CPU
    .venv/bin/python bench/bench_explainers.py --methods lime,gradcam --repeats 5
    .venv/bin/python bench/bench_explainers.py --device cuda --precision auto
    .venv/bin/python bench/bench_explainers.py --quick --model tiny   # smoke run, seconds
    .venv/bin/python bench/bench_explainers.py --model vit_b_16 --methods floor,gradcam --images 2 --no-quality

A JSON record goes to ``bench/results/<model>-<device>-<time>.json`` (or ``--out``).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

ROOT = Path(__file__).resolve().parent
METHODS = ("floor", "gradcam", "ig", "gradient_shap", "occlusion", "lime", "kernel_shap")
QUALITY_METHODS = ("lime", "kernel_shap")
#: skimage's sample photos, in the order benchmarks use them
PHOTOS = ("coffee", "chelsea", "astronaut", "rocket")
SCHEMA = 1


# ---------------------------------------------------------------------------------------------- models
class TinyNet(nn.Module):
    """A small seeded CNN for smoke runs (``--model tiny``): conv-relu-conv-relu-pool-linear."""

    def __init__(self, classes: int = 10, seed: int = 0) -> None:
        super().__init__()
        g = torch.Generator().manual_seed(seed)
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.ReLU(), nn.Conv2d(8, 16, 3, padding=1),
                                      nn.ReLU())
        self.head = nn.Linear(16, classes)
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.features(x).mean(dim=(2, 3)))


#: torchvision models benchmarked with random (seeded) weights: their ImageNet weights are not
#: available offline here, and speed does not depend on the weights
RANDOM_ZOO = ("resnet18", "vit_b_16", "swin_t")


def build_adapter(name: str, device: str, precision: str, *, seed: int = 0, backend: str = "auto"):
    """A ``ModelAdapter`` for ``name``: 'tiny', one of :data:`RANDOM_ZOO` (random init, seeded),
    'clip:ARCH' (random open_clip weights, classes doctor/nurse) or any model ``load_model`` accepts
    (real weights). ``backend``: engine of our gradient-free fp32 forwards (references always run
    eager PyTorch)."""
    from biasscope.models import ModelAdapter, load_model, resolve_device, resolve_precision
    from biasscope.models.zoo import default_target_layer, target_layout

    dev = resolve_device(device)
    fast = resolve_precision(precision, dev)
    if name == "tiny":
        module = _layout(TinyNet(seed=seed).to(dev), dev)
        layer, lname = default_target_layer(module)
        return ModelAdapter(name="tiny", model=module, class_names=[f"c{i}" for i in range(10)], input_size=32,
                            device=dev, target_layer=layer, target_layer_name=lname, source="random (seeded)",
                            fast_dtype=fast, backend=backend)
    if name in RANDOM_ZOO:
        import torchvision

        torch.manual_seed(seed)
        module = torchvision.models.get_model(name, weights=None)
        if name.startswith("vit"):  # torchvision zero-initialises the ViT head (all gradients 0)
            nn.init.normal_(module.heads.head.weight, std=0.02)
        module = _layout(module.to(dev), dev)
        layer, lname = default_target_layer(module, name)
        return ModelAdapter(name=name, model=module, class_names=[f"class_{i}" for i in range(1000)],
                            input_size=224, device=dev, target_layer=layer, target_layer_name=lname,
                            target_layout=target_layout(name, lname),
                            source=f"torchvision {name}(weights=None), torch.manual_seed({seed})", fast_dtype=fast,
                            backend=backend)
    if name.startswith("clip:"):
        return load_model(name, pretrained="random", classes="doctor,nurse", device=device, precision=precision,
                          backend=backend)
    return load_model(name, device=device, precision=precision, backend=backend)


def _layout(module: nn.Module, device: torch.device) -> nn.Module:
    """The memory layout ``load_model`` picks by default (channels_last for CPU conv nets)."""
    from biasscope.models.loader import prefers_channels_last

    return module.to(memory_format=torch.channels_last) if prefers_channels_last(module, device) else module


def contiguous_copy(module: nn.Module) -> nn.Module:
    """The same weights in PyTorch's default (contiguous) layout: the model as a user hands it to
    the reference libraries."""
    return copy.deepcopy(module).to(memory_format=torch.contiguous_format)


def with_fast_dtype(adapter, dtype: torch.dtype | None):
    """The same model (shared weights) with another autocast dtype for gradient-free forwards."""
    return ready(dataclasses.replace(adapter, fast_dtype=dtype))


def torch_fp32(adapter):
    """The same model (shared weights), fp32 forwards in eager PyTorch: what the reference libraries
    get, as a user would hand them the model."""
    return dataclasses.replace(adapter, fast_dtype=None, backend="torch")


def ready(adapter):
    """Build the adapter's forward engine (ONNX Runtime export and check) and measure its batch sizes
    now, outside the timings."""
    adapter.warm_up()
    return adapter


def bench_images(adapter, n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` real photos (skimage coffee, chelsea, astronaut, rocket) as a model batch and their
    top-1 classes under the model (fp32)."""
    from PIL import Image
    from skimage import data

    imgs = [Image.fromarray(getattr(data, PHOTOS[i % len(PHOTOS)])()) for i in range(n)]
    x = adapter.preprocess(imgs)
    targets = adapter.probabilities(x, fast=False).argmax(1)
    return x, targets


# ---------------------------------------------------------------------------------------------- timing
def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def interleave(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    device: torch.device,
    warmups: dict[str, Callable[[], Any]] | None = None,
) -> dict[str, list[float]]:
    """Time every callable ``repeats`` times, interleaved (order reversed every other round),
    after one untimed warm-up each (``warmups[k]`` if given: a cheaper call on the same path)."""
    warmups = warmups or {}
    for k, f in fns.items():
        warmups.get(k, f)()
    _sync(device)
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(repeats):
        order = list(fns) if r % 2 == 0 else list(reversed(list(fns)))
        for k in order:
            _sync(device)
            t0 = time.perf_counter()
            fns[k]()
            _sync(device)
            times[k].append(time.perf_counter() - t0)
    return times


def summarise(times: dict[str, list[float]], labels: dict[str, str], ours: str, reference: str) -> dict:
    """A method's record: every variant's times and median, and ratios against ``reference``."""
    variants = {k: {"label": labels.get(k, k), "times_s": v, "median_s": statistics.median(v)}
                for k, v in times.items()}
    ref = variants[reference]["median_s"]
    ratios = {k: v["median_s"] / ref for k, v in variants.items() if k != reference}
    return {"ours": ours, "reference": reference, "variants": variants, "ratios": ratios,
            "ratio": ratios[ours]}


# ---------------------------------------------------------------------------------------------- methods
class Bench:
    """Holds the model, images and options shared by the method benchmarks."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.adapter = ready(build_adapter(args.model, args.device, args.precision, seed=args.seed,
                                           backend=args.backend))
        self.device = self.adapter.device
        self.fast_dtype = self.adapter.fast_dtype
        self.fp32 = with_fast_dtype(self.adapter, None)
        self.torch32 = torch_fp32(self.adapter)  # the references' classifier
        self.backend = self.fp32.active_backend
        self.x, self.targets = bench_images(self.fp32, args.images)
        self.x1, self.t1 = self.x[:1], self.targets[:1]
        # references get the same weights in the default layout, as a user would hand them the model
        self.ref_model = contiguous_copy(self.adapter.model)
        self.layout = "channels_last" if _is_channels_last(self.adapter.model) else "contiguous"

    def run(self, method: str) -> dict:
        load0 = os.getloadavg()
        out = getattr(self, f"bench_{method}")()
        out["loadavg"] = {"start": list(load0), "end": list(os.getloadavg())}
        return out

    # -------------------------------------------------------------------------------- floor
    def bench_floor(self) -> dict:
        """Plain forward (fp32 and fast) and forward+backward per image, at the measured batch sizes."""
        a = self.adapter
        bf, bb = a.batch_size("forward"), a.batch_size("backward")
        s = a.input_size
        xf = torch.randn(bf, 3, s, s, device=self.device)
        xb = torch.randn(bb, 3, s, s, device=self.device)

        def fwd(ad) -> Callable[[], Any]:
            return lambda: ad.probabilities(xf, batch_size=bf)

        def fwd_bwd() -> None:
            p = xb.clone().requires_grad_(True)
            a.logits(p)[:, 0].sum().backward()

        def ref_fwd() -> None:
            with torch.no_grad():
                torch.softmax(self.ref_model(xf), 1)

        def ref_fwd_bwd() -> None:
            p = xb.clone().requires_grad_(True)
            self.ref_model(p)[:, 0].sum().backward()

        fns = {"forward_fp32": fwd(self.fp32), "forward_backward_fp32": fwd_bwd}
        if self.backend != "torch":
            fns["forward_fp32_torch"] = fwd(self.torch32)
        if self.layout != "contiguous":
            fns["forward_fp32_contiguous"] = ref_fwd
            fns["forward_backward_fp32_contiguous"] = ref_fwd_bwd
        if self.fast_dtype is not None:
            fns["forward_fast"] = fwd(a)
        times = interleave(fns, self.args.repeats, self.device)
        per_image = {k: statistics.median(v) / (bb if "backward" in k else bf) for k, v in times.items()}
        out: dict[str, Any] = {"batch_size": {"forward": bf, "backward": bb}, "layout": self.layout,
                               "backend": self.fp32.to_dict()["backend"], "times_s": times, "per_image_s": per_image}
        if self.backend != "torch":
            out["backend_speedup"] = per_image["forward_fp32_torch"] / per_image["forward_fp32"]
        if self.layout != "contiguous":
            out["layout_speedup"] = {
                "forward": per_image["forward_fp32_contiguous"] / per_image["forward_fp32"],
                "forward_backward": per_image["forward_backward_fp32_contiguous"] / per_image["forward_backward_fp32"]}
        if self.fast_dtype is not None:
            out["fast_speedup"] = per_image["forward_fp32"] / per_image["forward_fast"]
            with torch.no_grad():
                p32 = self.fp32.probabilities(self.x, fast=False)
                pf = a.probabilities(self.x, fast=True)
            out["fast_max_prob_diff"] = float((p32 - pf).abs().max())
            out["fast_top1_agree"] = float((p32.argmax(1) == pf.argmax(1)).float().mean())
        if self.args.sweep:
            out["sweep"] = batch_sweep(a, self.args.repeats)
        return out

    # -------------------------------------------------------------------------------- Grad-CAM
    def bench_gradcam(self) -> dict:
        from pytorch_grad_cam import GradCAM as RefGradCAM
        from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

        from biasscope.explainers import get_explainer
        from biasscope.models import resize_map

        a = self.adapter
        ours_cls = get_explainer("gradcam")
        s = a.input_size

        def ours(x, t) -> Callable[[], Any]:
            # the map at input resolution, like pytorch-grad-cam's output
            return lambda: resize_map(ours_cls(a).attribute(x, t).maps, (s, s))

        ref_layer = dict(self.ref_model.named_modules())[a.target_layer_name]
        reshape = None
        if a.target_layout != "nchw" and not isinstance(a.target_layer, nn.Conv2d):
            from biasscope.explainers._cam import to_grid

            def reshape(t):  # transformers: tokens / channels-last maps to grids, as its docs show
                return to_grid(t, a.target_layout, t.shape[0], s)

        def ref(x, t) -> Callable[[], Any]:
            def f():
                with RefGradCAM(model=self.ref_model, target_layers=[ref_layer], reshape_transform=reshape) as cam:
                    # frozen parameters: the input must require grad for the reference's backward
                    return cam(input_tensor=x.clone().requires_grad_(True),
                               targets=[ClassifierOutputTarget(int(c)) for c in t])
            return f

        one = interleave({"ours": ours(self.x1, self.t1), "pytorch_grad_cam": ref(self.x1, self.t1)},
                         self.args.repeats, self.device)
        labels = {"ours": "biasscope gradcam (1 image, map resized to input)",
                  "pytorch_grad_cam": "pytorch-grad-cam GradCAM (1 image)"}
        rec = summarise(one, labels, "ours", "pytorch_grad_cam")
        n = self.x.shape[0]
        if n > 1:
            many = interleave({"ours": ours(self.x, self.targets), "pytorch_grad_cam": ref(self.x, self.targets)},
                              self.args.repeats, self.device)
            rec["batched"] = summarise(many, {"ours": f"biasscope gradcam ({n} images, batched)",
                                              "pytorch_grad_cam": f"pytorch-grad-cam GradCAM ({n} images)"},
                                       "ours", "pytorch_grad_cam")
        rec["params"] = {"layer": a.target_layer_name, "images": n}
        return rec

    # -------------------------------------------------------------------------------- IG
    def bench_ig(self) -> dict:
        from captum.attr import IntegratedGradients as RefIG

        from biasscope.explainers import get_explainer
        from biasscope.explainers._baselines import make_baseline

        a = self.adapter
        steps = self.args.ig_steps
        base = make_baseline(a, self.x1, "black")
        exp = get_explainer("integrated_gradients")(a, steps=steps, baseline="black")
        ref = RefIG(self.ref_model)
        res: dict[str, Any] = {}

        def ours() -> None:
            res["ours"] = exp.attribute(self.x1, self.t1)

        def captum() -> None:
            res["captum"] = ref.attribute(self.x1, baselines=base, target=int(self.t1[0]), n_steps=steps,
                                          method="gausslegendre", return_convergence_delta=True)

        times = interleave({"ours": ours, "captum": captum}, self.args.repeats, self.device)
        rec = summarise(times, {"ours": f"biasscope integrated_gradients ({steps} steps, internal batch "
                                         f"{a.batch_size('backward')}, completeness reported)",
                                "captum": f"captum IntegratedGradients ({steps} steps, one batch, convergence delta)"},
                        "ours", "captum")
        ours_map = res["ours"].maps[0]
        ref_map = res["captum"][0][0].sum(0).detach().cpu()
        rec["agreement"] = {"max_abs_diff": float((ours_map - ref_map).abs().max()),
                            "max_abs_ref": float(ref_map.abs().max()),
                            "completeness_error": res["ours"].checks[0]["completeness_error"],
                            "completeness_relative": res["ours"].checks[0]["completeness_relative"],
                            "captum_delta": float(res["captum"][1].abs().max())}
        rec["params"] = {"steps": steps, "baseline": "black"}
        return rec

    # -------------------------------------------------------------------------------- Gradient SHAP
    def bench_gradient_shap(self) -> dict:
        import shap

        from biasscope.explainers import get_explainer

        a = self.adapter
        k = self.args.gshap_samples
        exp = get_explainer("gradient_shap")(a, n_samples=k)
        bg = exp.background(self.x1.cpu(), exp.generator())[:, 0].to(self.device)  # (B, 3, S, S)
        ref_model = _ArgmaxFree(self.ref_model, int(self.t1[0]))
        ref = shap.GradientExplainer(ref_model, bg)

        def ours() -> None:
            exp.attribute(self.x1, self.t1)

        def shap_ref() -> None:
            ref.shap_values(self.x1, nsamples=k, rseed=0)

        times = interleave({"ours": ours, "shap": shap_ref}, self.args.repeats, self.device)
        rec = summarise(times, {"ours": f"biasscope gradient_shap ({k} samples, completeness reported)",
                                "shap": f"shap GradientExplainer ({k} samples, batch_size=50, same background)"},
                        "ours", "shap")
        rec["params"] = {"n_samples": k, "background": exp.config["background"]}
        return rec

    # -------------------------------------------------------------------------------- occlusion
    def bench_occlusion(self) -> dict:
        from captum.attr import Occlusion as RefOcclusion

        from biasscope.explainers import get_explainer
        from biasscope.explainers._baselines import make_baseline

        a = self.adapter
        s = a.input_size
        win, stride = max(2, s // 7), max(1, s // 14)
        exp = get_explainer("occlusion")(a, window=win, stride=stride, fill="black", output="probability")
        exp32 = get_explainer("occlusion")(self.fp32, window=win, stride=stride, fill="black", output="probability")
        base = make_baseline(a, self.x1, "black")
        model = self.ref_model

        def prob(z: torch.Tensor) -> torch.Tensor:
            return torch.softmax(model(z), dim=1)

        ref = RefOcclusion(prob)
        ppe = a.batch_size("forward")

        def captum(per_eval: int) -> Callable[[], Any]:
            def f():
                with torch.no_grad():
                    return ref.attribute(self.x1, sliding_window_shapes=(3, win, win), strides=(3, stride, stride),
                                         baselines=base, target=int(self.t1[0]), perturbations_per_eval=per_eval)
            return f

        fns = {"ours": lambda: exp.attribute(self.x1, self.t1), "captum": captum(1),
               "captum_batched": captum(ppe)}
        labels = {"ours": f"biasscope occlusion (fast dtype {_dt(self.fast_dtype)}, forwards {self.backend})",
                  "captum": "captum Occlusion (default perturbations_per_eval=1)",
                  "captum_batched": f"captum Occlusion (perturbations_per_eval={ppe})"}
        if self.fast_dtype is not None:
            fns["ours_fp32"] = lambda: exp32.attribute(self.x1, self.t1)
            labels["ours_fp32"] = "biasscope occlusion (fp32)"
        if self.backend != "torch":
            exp_t = get_explainer("occlusion")(self.torch32, window=win, stride=stride, fill="black",
                                               output="probability")
            fns["ours_torch"] = lambda: exp_t.attribute(self.x1, self.t1)
            labels["ours_torch"] = "biasscope occlusion (fp32, eager PyTorch forwards)"
        times = interleave(fns, self.args.repeats, self.device)
        rec = summarise(times, labels, "ours", "captum")
        rec["ratio_vs_batched_reference"] = rec["variants"]["ours"]["median_s"] / rec["variants"]["captum_batched"][
            "median_s"]
        with torch.no_grad():
            ours_map = exp32.attribute(self.x1, self.t1).maps[0]
            ref_map = captum(ppe)()[0].sum(0).cpu() / 3  # captum spreads the window's drop over 3 channels
        rec["agreement_fp32"] = {"max_abs_diff": float((ours_map - ref_map).abs().max()),
                                 "max_abs_ref": float(ref_map.abs().max())}
        rec["params"] = {"window": win, "stride": stride, "fill": "black", "output": "probability"}
        return rec

    # -------------------------------------------------------------------------------- LIME
    def bench_lime(self) -> dict:
        from biasscope.explainers import get_explainer
        from biasscope.explainers._superpixels import segment, to_uint8

        a = self.adapter
        n = self.args.lime_samples
        exp = get_explainer("lime")(a, num_samples=n)
        exp32 = get_explainer("lime")(self.fp32, num_samples=n)
        warm = get_explainer("lime")(a, num_samples=10)
        warm32 = get_explainer("lime")(self.fp32, num_samples=10)
        t = int(self.t1[0])
        k = int(segment(to_uint8(a, self.x1)[0], "slic", 50).max()) + 1
        lib = library_runner("lime", self.torch32, self.x1, t, k)

        def lime_ref(samples: int) -> Callable[[], Any]:
            return lambda: lib(samples, 0)

        fns = {"ours": lambda: exp.attribute(self.x1, self.t1), "lime": lime_ref(n)}
        warmups = {"ours": lambda: warm.attribute(self.x1, self.t1), "lime": lime_ref(10)}
        labels = {"ours": f"biasscope lime ({n} samples, fast dtype {_dt(self.fast_dtype)}, "
                          f"forwards {self.backend}, batch {a.batch_size()})",
                  "lime": f"lime {_version('lime')} LimeImageExplainer ({n} samples, batch_size=10, fp32, "
                          "same slic superpixels)"}
        if self.fast_dtype is not None:
            fns["ours_fp32"] = lambda: exp32.attribute(self.x1, self.t1)
            warmups["ours_fp32"] = lambda: warm32.attribute(self.x1, self.t1)
            labels["ours_fp32"] = f"biasscope lime ({n} samples, fp32)"
        if self.backend != "torch":
            exp_t = get_explainer("lime")(self.torch32, num_samples=n)
            fns["ours_torch"] = lambda: exp_t.attribute(self.x1, self.t1)
            labels["ours_torch"] = f"biasscope lime ({n} samples, fp32, eager PyTorch forwards)"
        times = interleave(fns, self.args.repeats, self.device, warmups)
        rec = summarise(times, labels, "ours", "lime")
        rec["params"] = {"num_samples": n, "segmentation": "slic", "n_segments": 50, "hide": "mean"}
        if self.fast_dtype is not None:
            w_fast = exp.attribute(self.x1, self.t1).weights[0]
            w_32 = exp32.attribute(self.x1, self.t1).weights[0]
            rec["fast_vs_fp32_spearman"] = spearman(w_fast, w_32)
        return rec

    # -------------------------------------------------------------------------------- Kernel SHAP
    def bench_kernel_shap(self) -> dict:
        from biasscope.explainers import get_explainer

        a = self.adapter
        n = self.args.kshap_samples
        exp = get_explainer("kernel_shap")(a, num_samples=n)
        exp32 = get_explainer("kernel_shap")(self.fp32, num_samples=n)
        warm = get_explainer("kernel_shap")(a, num_samples=10)
        ref = kernel_shap_reference(self.torch32, self.x1, int(self.t1[0]))

        fns = {"ours": lambda: exp.attribute(self.x1, self.t1), "shap": lambda: ref(n)}
        warmups = {"ours": lambda: warm.attribute(self.x1, self.t1), "shap": lambda: ref(10)}
        labels = {"ours": f"biasscope kernel_shap ({n} samples, fast dtype {_dt(self.fast_dtype)}, "
                          f"forwards {self.backend})",
                  "shap": f"shap {_version('shap')} KernelExplainer ({n} samples, l1_reg=False, fp32, "
                          "same superpixels and fill)"}
        if self.fast_dtype is not None:
            fns["ours_fp32"] = lambda: exp32.attribute(self.x1, self.t1)
            labels["ours_fp32"] = f"biasscope kernel_shap ({n} samples, fp32)"
        if self.backend != "torch":
            exp_t = get_explainer("kernel_shap")(self.torch32, num_samples=n)
            fns["ours_torch"] = lambda: exp_t.attribute(self.x1, self.t1)
            labels["ours_torch"] = f"biasscope kernel_shap ({n} samples, fp32, eager PyTorch forwards)"
        times = interleave(fns, self.args.repeats, self.device, warmups)
        rec = summarise(times, labels, "ours", "shap")
        rec["params"] = {"num_samples": n, "segmentation": "slic", "n_segments": 50, "hide": "mean"}
        if self.fast_dtype is not None:
            rec["fast_vs_fp32_spearman"] = spearman(exp.attribute(self.x1, self.t1).weights[0],
                                                    exp32.attribute(self.x1, self.t1).weights[0])
        return rec


def _is_channels_last(module: nn.Module) -> bool:
    w = next((m.weight for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    return w is not None and w.is_contiguous(memory_format=torch.channels_last) and not w.is_contiguous()


class _ArgmaxFree(nn.Module):
    """The model restricted to one output column (shap's GradientExplainer then explains only it)."""

    def __init__(self, model: nn.Module, target: int) -> None:
        super().__init__()
        self.model = model
        self.target = target

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.target : self.target + 1]


def _dt(dtype: torch.dtype | None) -> str:
    return "fp32" if dtype is None else str(dtype).replace("torch.", "")


def _version(pkg: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(pkg)
    except PackageNotFoundError:
        return "?"


def spearman(a: np.ndarray, b: np.ndarray) -> float:
    """Spearman rank correlation of two weight vectors."""
    from scipy.stats import spearmanr

    return float(spearmanr(np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)).statistic)


def uint8_classifier(adapter, batch_size: int | None) -> Callable[[np.ndarray], np.ndarray]:
    """``(n, S, S, 3)`` uint8 images -> fp32 softmax probabilities, as the ``lime`` package expects."""

    def classify(batch: np.ndarray) -> np.ndarray:
        t = torch.from_numpy(np.ascontiguousarray(batch)).permute(0, 3, 1, 2).float().div_(255.0)
        return adapter.probabilities(adapter.normalize(t), batch_size=batch_size, fast=False).numpy()

    return classify


def kernel_shap_reference(adapter, x1: torch.Tensor, target: int) -> Callable[[int], np.ndarray]:
    """``shap.KernelExplainer`` over the same superpixels and fill as ours: a function of the sample count."""
    import shap

    from biasscope.explainers._superpixels import fill_images, segment_batch

    segments = segment_batch(adapter, x1, "slic", 50)
    fill = fill_images(adapter, x1, segments, "mean")[0]
    seg = torch.as_tensor(segments[0], dtype=torch.long)
    k = int(seg.max()) + 1
    xi = x1[0].detach().float().cpu()

    def f(z: np.ndarray) -> np.ndarray:
        keep = torch.as_tensor(z > 0.5)[:, seg][:, None]
        imgs = torch.where(keep, xi[None], fill[None])
        return adapter.probabilities(imgs, fast=False)[:, target].double().numpy()

    def run(nsamples: int, seed: int = 0) -> np.ndarray:
        np.random.seed(seed)  # shap.KernelExplainer samples coalitions with numpy's global generator
        e = shap.KernelExplainer(f, np.zeros((1, k)))
        return np.asarray(e.shap_values(np.ones((1, k)), nsamples=nsamples, l1_reg=False, silent=True)).reshape(-1)

    return run


def batch_sweep(adapter, repeats: int) -> dict:
    """ms per image for each candidate batch size: forward (fp32, fast) and forward+backward."""
    from biasscope.models.batching import CANDIDATES

    s = adapter.input_size
    out: dict[str, dict[int, float]] = {"forward_fp32": {}, "forward_backward_fp32": {}}
    if adapter.fast_dtype is not None:
        out["forward_fast"] = {}
    for bs in CANDIDATES:
        x = torch.randn(bs, 3, s, s, device=adapter.device)

        def bwd(x=x) -> None:
            p = x.clone().requires_grad_(True)
            adapter.logits(p)[:, 0].sum().backward()

        fns = {"forward_fp32": lambda x=x, bs=bs: adapter.probabilities(x, batch_size=bs, fast=False),
               "forward_backward_fp32": bwd}
        if adapter.fast_dtype is not None:
            fns["forward_fast"] = lambda x=x, bs=bs: adapter.probabilities(x, batch_size=bs, fast=True)
        times = interleave(fns, max(1, repeats), adapter.device)
        for k, v in times.items():
            out[k][bs] = 1000 * statistics.median(v) / bs
    return out


# ---------------------------------------------------------------------------------------------- quality
def quality(args: argparse.Namespace) -> dict:
    """Rank agreement of LIME / Kernel SHAP superpixel weights with a high-sample fp32 reference.

    On ``--quality-model`` (real weights), for each of ``--quality-images`` photos: the reference is
    our own fp32 run with ``--ref-samples`` samples. Against it, over ``--quality-seeds`` seeds per
    photo, we score the ``lime`` package / ``shap`` at the standard sample count, ours (fast dtype
    and fp32) at that count, and ours at fewer samples, each with the time it took. One photo and
    one seed is not enough: at 500 LIME samples the Spearman of single runs ranged 0.66-0.95 across
    photos and seeds. Figures are means over all (photo, seed) trials, with the minimum and the
    per-photo means; "cheapest matching" is the fastest run whose mean agreement reaches the
    library's mean.
    """
    from biasscope.explainers import get_explainer

    name = args.quality_model or args.model
    adapter = ready(build_adapter(name, args.device, args.precision, seed=args.seed, backend=args.backend))
    fp32 = with_fast_dtype(adapter, None)
    ref32 = torch_fp32(adapter)
    xs, targets = bench_images(fp32, args.quality_images)
    seeds = list(range(args.quality_seeds))
    out: dict[str, Any] = {"model": name, "targets": [int(t) for t in targets], "images": PHOTOS[: len(xs)],
                           "seeds": seeds, "ref_samples": args.ref_samples,
                           "fast_dtype": _dt(adapter.fast_dtype), "backend": adapter.to_dict()["backend"],
                           "loadavg_start": list(os.getloadavg())}

    def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
        _sync(adapter.device)
        t0 = time.perf_counter()
        r = fn()
        _sync(adapter.device)
        return r, time.perf_counter() - t0

    # warm up both paths (batch-size measurement, ONNX Runtime, autocast kernels)
    for ad in (adapter, fp32):
        get_explainer("lime")(ad, num_samples=64).attribute(xs[:1], targets[:1])

    for method in [m for m in QUALITY_METHODS if m in args.methods]:
        std_n = args.lime_samples if method == "lime" else args.kshap_samples
        counts = sorted({max(10, std_n // 8), max(10, std_n // 4), max(10, std_n // 2), std_n})
        runs = [(n, adapter) for n in counts] + ([(std_n, fp32)] if adapter.fast_dtype is not None else [])
        trials: dict[tuple, list[dict]] = {("library",): []} | {(n, _dt(ad.fast_dtype)): [] for n, ad in runs}
        fast_vs_fp32 = []
        ref_seconds = []
        for i, photo in enumerate(out["images"]):
            x, t = xs[i : i + 1], targets[i : i + 1]
            ref = get_explainer(method)(fp32, num_samples=args.ref_samples, seed=12345)
            ref_w, ref_s = timed(lambda ref=ref, x=x, t=t: ref.attribute(x, t).weights[0])
            ref_seconds.append(ref_s)
            lib = library_runner(method, ref32, x, int(t[0]), len(ref_w))
            for seed in seeds:
                w, sec = timed(lambda lib=lib, n=std_n, seed=seed: lib(n, seed))
                trials[("library",)].append({"image": photo, "seed": seed, "seconds": sec,
                                             "spearman": spearman(w, ref_w)})
                by_run = {}
                for n, ad in runs:
                    e = get_explainer(method)(ad, num_samples=n, seed=seed)
                    w, sec = timed(lambda e=e, x=x, t=t: e.attribute(x, t).weights[0])
                    by_run[(n, _dt(ad.fast_dtype))] = w
                    trials[(n, _dt(ad.fast_dtype))].append({"image": photo, "seed": seed, "seconds": sec,
                                                            "spearman": spearman(w, ref_w)})
                if adapter.fast_dtype is not None:
                    fast_vs_fp32.append(spearman(by_run[(std_n, _dt(adapter.fast_dtype))], by_run[(std_n, "fp32")]))
        lib_name = f"lime {_version('lime')}" if method == "lime" else f"shap {_version('shap')} KernelExplainer"
        library = {"name": lib_name, "samples": std_n, **summarise_trials(trials[("library",)])}
        rec: dict[str, Any] = {"standard_samples": std_n, "reference_seconds": statistics.mean(ref_seconds),
                               "library": library, "runs": []}
        for (n, dtype), ts in ((k, v) for k, v in trials.items() if k != ("library",)):
            r = {"samples": n, "dtype": dtype, **summarise_trials(ts)}
            r["ratio_to_library_time"] = r["seconds"] / library["seconds"]
            rec["runs"].append(r)
        fast = [r for r in rec["runs"] if r["dtype"] == _dt(adapter.fast_dtype)]
        matching = [r for r in fast if r["spearman"] >= library["spearman"]]
        rec["cheapest_matching_library_quality"] = min(matching, key=lambda r: r["seconds"]) if matching else None
        rec["standard_fast"] = next(r for r in fast if r["samples"] == std_n)
        if adapter.fast_dtype is not None:
            rec["standard_fp32"] = next(r for r in rec["runs"] if r["samples"] == std_n and r["dtype"] == "fp32")
            rec["fast_vs_fp32_spearman"] = statistics.mean(fast_vs_fp32)
            rec["fast_vs_fp32_spearman_min"] = min(fast_vs_fp32)
        out[method] = rec
    out["loadavg_end"] = list(os.getloadavg())
    return out


def summarise_trials(trials: list[dict]) -> dict:
    """Mean seconds and mean/min Spearman over (photo, seed) trials, per-photo means, and the trials."""
    per_image: dict[str, list[float]] = {}
    for tr in trials:
        per_image.setdefault(tr["image"], []).append(tr["spearman"])
    rhos = [tr["spearman"] for tr in trials]
    return {"seconds": statistics.mean(tr["seconds"] for tr in trials), "spearman": statistics.mean(rhos),
            "spearman_min": min(rhos), "per_image": {k: statistics.mean(v) for k, v in per_image.items()},
            "trials": trials}


def library_runner(method: str, adapter, x1: torch.Tensor, target: int, k: int) -> Callable[[int, int], np.ndarray]:
    """The reference library's superpixel weights ``(k,)`` as a function of ``(samples, seed)``: the
    ``lime`` package (same slic superpixels, mean fill) or ``shap.KernelExplainer``."""
    if method == "kernel_shap":
        return kernel_shap_reference(adapter, x1, target)
    from lime import lime_image

    from biasscope.explainers._superpixels import segment, to_uint8

    img = to_uint8(adapter, x1)[0]
    clf = uint8_classifier(adapter, batch_size=None)

    def run(n: int, seed: int) -> np.ndarray:
        e = lime_image.LimeImageExplainer(random_state=seed)
        r = e.explain_instance(img, clf, labels=(target,), top_labels=None, hide_color=None, num_samples=n,
                               batch_size=10, segmentation_fn=lambda im: segment(im, "slic", 50), random_seed=seed)
        w = np.zeros(k)
        for f, v in r.local_exp[target]:
            w[f] = v
        return w

    return run


# ---------------------------------------------------------------------------------------------- main
def environment(device: torch.device) -> dict:
    flags = ""
    model = platform.processor()
    try:
        info = Path("/proc/cpuinfo").read_text()
        for line in info.splitlines():
            if line.startswith("flags") and not flags:
                flags = line
            if line.startswith("model name") and model == platform.processor():
                model = line.split(":", 1)[1].strip()
    except OSError:
        pass
    env = {"python": platform.python_version(), "torch": torch.__version__, "platform": platform.platform(),
           "cpu": model, "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
           "cpu_flags": {f: f in flags.split() for f in ("avx512f", "avx512_bf16", "amx_bf16", "amx_tile")},
           "packages": {p: _version(p) for p in ("torchvision", "captum", "grad-cam", "lime", "shap")}}
    if device.type == "cuda":
        env["gpu"] = torch.cuda.get_device_name(device)
    return env


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--methods", default=",".join(METHODS), help=f"comma-separated subset of {', '.join(METHODS)}")
    p.add_argument("--model", default="resnet18",
                   help="resnet18, vit_b_16, swin_t (random init), clip:ViT-B-32 (random), tiny, or a load_model name")
    p.add_argument("--quality-model", default="mobilenet_v2",
                   help="model with real weights for the rank-agreement figures ('' = --model)")
    p.add_argument("--device", default="cpu", help="cpu or cuda")
    p.add_argument("--precision", default="auto", choices=["auto", "fp32", "bf16", "fp16"],
                   help="our autocast dtype for gradient-free forwards (references always run fp32)")
    p.add_argument("--backend", default="auto", choices=["auto", "torch", "onnxruntime"],
                   help="engine of our gradient-free fp32 forwards (references always run eager PyTorch)")
    p.add_argument("--repeats", type=int, default=3, help="timed rounds per method (medians are compared)")
    p.add_argument("--images", type=int, default=4, help="images in the batched Grad-CAM run")
    p.add_argument("--lime-samples", type=int, default=1000)
    p.add_argument("--kshap-samples", type=int, default=500)
    p.add_argument("--ref-samples", type=int, default=5000, help="samples of the fp32 quality reference")
    p.add_argument("--quality-images", type=int, default=4,
                   help=f"photos for the quality figures ({', '.join(PHOTOS)})")
    p.add_argument("--quality-seeds", type=int, default=3, help="seeds per photo for the quality figures")
    p.add_argument("--ig-steps", type=int, default=50)
    p.add_argument("--gshap-samples", type=int, default=50)
    p.add_argument("--sweep", action="store_true", help="also time every candidate batch size (floor)")
    p.add_argument("--no-quality", action="store_true", help="skip the rank-agreement figures")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 1 repeat, 2 images, few samples, quality on --model with 200-sample reference")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default=None, help="JSON record path (default bench/results/<model>-<device>-<time>.json)")
    args = p.parse_args(argv)
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in args.methods if m not in METHODS]
    if bad:
        p.error(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    if args.quick:
        args.repeats, args.images = 1, 2
        args.lime_samples, args.kshap_samples, args.ref_samples = 60, 40, 200
        args.ig_steps, args.gshap_samples = 8, 8
        args.quality_model = ""
        args.quality_images, args.quality_seeds = 2, 2
    return args


def format_table(record: dict) -> str:
    """One line per comparison: ours, reference, ratio."""
    lines = [f"{'method':28s} {'ours (s)':>10s} {'reference (s)':>14s} {'ratio':>7s}  reference"]
    for method, rec in record["results"].items():
        if method == "floor":
            for k, v in rec["per_image_s"].items():
                lines.append(f"{'floor ' + k:28s} {1000 * v:9.1f}ms/img")
            continue
        for sub, r in (("", rec), (" (batched)", rec.get("batched"))):
            if r is None:
                continue
            o, ref = r["variants"][r["ours"]], r["variants"][r["reference"]]
            lines.append(f"{method + sub:28s} {o['median_s']:10.3f} {ref['median_s']:14.3f} {r['ratio']:7.3f}  "
                         f"{ref['label']}")
            for k, v in r["variants"].items():
                if k not in (r["ours"], r["reference"]):
                    lines.append(f"{'  ' + k:28s} {v['median_s']:10.3f} {'':14s} {r['ratios'][k]:7.3f}  "
                                 f"{v['label']}")
    for method, q in record.get("quality", {}).items():
        if not isinstance(q, dict) or "library" not in q:
            continue
        lib = q["library"]
        lines.append(f"quality {method} (mean over {len(lib['trials'])} photo x seed trials): {lib['name']} "
                     f"@{lib['samples']} spearman {lib['spearman']:.3f} (min {lib['spearman_min']:.3f}) "
                     f"in {lib['seconds']:.2f}s")
        for r in q["runs"]:
            lines.append(f"   ours {r['dtype']:8s} @{r['samples']:5d} spearman {r['spearman']:.3f} "
                         f"(min {r['spearman_min']:.3f}) in {r['seconds']:.2f}s "
                         f"({r['ratio_to_library_time']:.3f}x library time)")
        if "fast_vs_fp32_spearman" in q:
            lines.append(f"   ours fast vs fp32 @{q['standard_samples']}: spearman {q['fast_vs_fp32_spearman']:.3f}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; print the table; write and return the JSON record."""
    args = parse_args(argv)
    os.environ.setdefault("TQDM_DISABLE", "1")  # the lime package's progress bar
    torch.manual_seed(args.seed)
    bench = Bench(args)
    record: dict[str, Any] = {
        "schema": SCHEMA,
        "created": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join([Path(sys.executable).name, *sys.argv]) if argv is None else
        " ".join(["bench_explainers.py", *argv]),
        "environment": environment(bench.device),
        "config": {"model": args.model, "source": bench.adapter.source, "input_size": bench.adapter.input_size,
                   "layout_ours": bench.layout, "layout_reference": "contiguous",
                   "device": str(bench.device), "precision": args.precision, "fast_dtype": _dt(bench.fast_dtype),
                   "backend": bench.fp32.to_dict()["backend"],
                   "repeats": args.repeats, "images": args.images, "quick": args.quick,
                   "lime_samples": args.lime_samples, "kshap_samples": args.kshap_samples,
                   "ref_samples": args.ref_samples, "ig_steps": args.ig_steps, "gshap_samples": args.gshap_samples},
        "loadavg_start": list(os.getloadavg()),
        "results": {},
    }
    out = Path(args.out) if args.out else ROOT / "results" / (
        f"{args.model.replace(':', '-')}-{bench.device.type}-{datetime.now(UTC).strftime('%Y%m%dT%H%M%S')}.json")
    out.parent.mkdir(parents=True, exist_ok=True)

    def save(complete: bool) -> None:  # after every method: a long run keeps what it measured
        record["complete"] = complete
        record["config"]["batch_sizes"] = bench.adapter.batch_sizes
        record["loadavg_end"] = list(os.getloadavg())
        out.write_text(json.dumps(record, indent=1, default=float))

    for method in [m for m in METHODS if m in args.methods]:
        t0 = time.perf_counter()
        record["results"][method] = bench.run(method)
        print(f"... {method} done in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
        save(False)
    if not args.no_quality and any(m in args.methods for m in QUALITY_METHODS):
        t0 = time.perf_counter()
        record["quality"] = quality(args)
        print(f"... quality done in {time.perf_counter() - t0:.1f}s", file=sys.stderr, flush=True)
    save(True)
    print(format_table(record))
    print(f"wrote {out}")
    return record


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT.parent / "src"))
    main()
