"""The Python API: load a model, predict, explain, render. The CLI and web app call only this.

>>> from biasscope import load_model, load_image, explain, render_overlay
>>> model = load_model("mobilenet_v2")
>>> img = load_image("photo.jpg")
>>> exps = explain(model, img, methods=["gradcam", "ig"])
>>> render_overlay(img, exps["gradcam"]).save("gradcam.png")
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
from PIL import Image

from .errors import BiasscopeError, CancelledError
from .explainers import Attribution, Explainer, Explanation, ProgressFn, get_explainer
from .models.adapter import ModelAdapter, Prediction

__all__ = [
    "COMPLETENESS_LIMIT",
    "LOW_PROBABILITY",
    "Predicted",
    "ProbabilitySelector",
    "explain",
    "explain_batch",
    "explanation_warnings",
    "method_params",
    "predict",
    "predict_and_explain",
    "resolve_targets",
    "with_concept",
]

#: below this target probability a heatmap explains a class the model does not predict: warned about
LOW_PROBABILITY = 1e-3
#: above this relative completeness error an Integrated Gradients map is unreliable: warned about
COMPLETENESS_LIMIT = 0.10


def explanation_warnings(e: Explanation) -> list[str]:
    """What a reader must know before trusting ``e``: a near-zero target probability, a large IG completeness error."""
    out = []
    if e.target_probability < LOW_PROBABILITY:
        out.append(f"{e.label}: the target {e.target_name!r} has probability {e.target_probability:.2e} "
                   f"(< {LOW_PROBABILITY:g}); the heatmap explains a class the model does not predict here")
    rel = e.checks.get("completeness_relative")
    if isinstance(rel, float) and rel > COMPLETENESS_LIMIT:
        out.append(f"{e.label}: completeness error {100 * rel:.0f}% of the logit difference (> "
                   f"{100 * COMPLETENESS_LIMIT:.0f}%); the attributions do not add up to the output: use more steps")
    return out


def with_concept(
    adapter: ModelAdapter, target: int | str | None, concepts: Mapping[str, Sequence[str]] | None
) -> tuple[ModelAdapter, int | str | None]:
    """When ``target`` names one of ``concepts``, the adapter with that concept as its last class and its index.

    The concept's probability is the summed probability of its classes; gradient methods explain the sum of
    their logits (see :class:`~biasscope.audit.concepts.ConceptAdapter`). Otherwise both are returned as given.
    """
    if not concepts or not isinstance(target, str):
        return adapter, target
    by_name = {k.strip().lower(): (k, v) for k, v in concepts.items()}
    hit = by_name.get(target.strip().lower())
    if hit is None:
        return adapter, target
    from .audit.concepts import concept_adapter

    ca = concept_adapter(adapter, hit[0], list(hit[1]))
    return ca, ca.concept_index

#: progress(method_name, fraction in [0, 1]); may raise CancelledError
MethodProgress = Callable[[str, float], None]


def predict(
    adapter: ModelAdapter, images: Image.Image | Sequence[Image.Image], *, top: int = 5
) -> list[list[Prediction]]:
    """Top-``top`` predictions per image (batched)."""
    return adapter.predict(images, top=top)


def method_params(params: Mapping[str, Mapping[str, Any]], method: str, cls: type) -> dict[str, Any]:
    """A method's parameters from ``params``, keyed by the name asked for or the registry name."""
    return dict(params.get(method, params.get(cls.name, {})))


def resolve_targets(
    adapter: ModelAdapter, probs: torch.Tensor, target: int | str | Sequence[int | str] | None
) -> torch.Tensor:
    """Target class per image: ``None`` -> top-1; an index or class name for all; or one each."""
    n = probs.shape[0]
    if target is None:
        return probs.argmax(1)
    if isinstance(target, int | str):
        return torch.full((n,), adapter.class_index(target), dtype=torch.long)
    if len(target) != n:
        raise BiasscopeError(f"got {len(target)} targets for {n} images")
    return torch.tensor([adapter.class_index(t) for t in target], dtype=torch.long)


def explain(
    adapter: ModelAdapter,
    image: Image.Image,
    methods: str | Sequence[str] = ("gradcam",),
    *,
    target: int | str | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    faithfulness: bool = True,
    progress: MethodProgress | None = None,
    concepts: Mapping[str, Sequence[str]] | None = None,
) -> dict[str, Explanation]:
    """Explain one image with several methods; returns ``{method: Explanation}``.

    ``target`` may name one of ``concepts`` (``{"doctor": ["stethoscope", "lab coat"]}``): the explanation is
    then of the concept (summed probability; gradient methods: the sum of its classes' logits).
    """
    adapter, target = with_concept(adapter, target, concepts)
    return explain_batch(
        adapter, [image], methods, target=target, params=params, faithfulness=faithfulness, progress=progress
    )[0]


def explain_batch(
    adapter: ModelAdapter,
    images: Sequence[Image.Image],
    methods: str | Sequence[str] = ("gradcam",),
    *,
    target: int | str | Sequence[int | str] | None = None,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    faithfulness: bool = True,
    progress: MethodProgress | None = None,
    inputs: torch.Tensor | None = None,
    probabilities: torch.Tensor | None = None,
) -> list[dict[str, Explanation]]:
    """Explain several images with several methods, each method batched over all images.

    Heatmaps are mapped onto each image's own pixels (``adapter.map_to_image``: resized back, or a
    face chip's map warped back onto the photo). With ``faithfulness``, every explanation gets
    deletion/insertion AUCs (batched) in ``checks``. A caller that already has the model batch
    (``inputs = adapter.preprocess(images)``) and its fp32 ``probabilities`` passes them in, which
    saves a preprocessing and a forward pass per batch. A caller whose targets depend on the
    prediction uses :func:`predict_and_explain` (one forward pass fewer with a CAM).
    """
    explainers = _explainers(adapter, methods, params)
    x = adapter.preprocess(list(images)) if inputs is None else inputs
    probs = adapter.probabilities(x, fast=False) if probabilities is None else probabilities
    _check_batch(adapter, images, x, probs)
    targets = resolve_targets(adapter, probs, target)
    results: list[dict[str, Explanation]] = [{} for _ in images]
    for exp in explainers:
        attr, seconds = _timed(exp, lambda cb, e=exp: e.run(x, targets, progress=cb), progress)
        _add(results, adapter, images, exp, attr, seconds, x, probs, targets, faithfulness, progress)
    return results


class Predicted(NamedTuple):
    """What :func:`predict_and_explain` found for a batch."""

    #: ``(N, C)`` softmax probabilities the targets were chosen from
    probabilities: torch.Tensor
    #: the class explained per image
    targets: list[int]
    #: ``{method: Explanation}`` per image
    explanations: list[dict[str, Explanation]]


#: ``(fp32 probabilities of a chunk of images (n, C), index of the chunk's first image) -> class indices (n,)``
ProbabilitySelector = Callable[[torch.Tensor, int], Sequence[int] | torch.Tensor]


def predict_and_explain(
    adapter: ModelAdapter,
    images: Sequence[Image.Image],
    methods: str | Sequence[str],
    *,
    select: ProbabilitySelector,
    params: Mapping[str, Mapping[str, Any]] | None = None,
    faithfulness: bool = True,
    progress: MethodProgress | None = None,
    inputs: torch.Tensor | None = None,
) -> Predicted:
    """Predict a batch and explain, with every method, the class ``select`` picks from each image's
    probabilities (its predicted class, the likeliest class of its label, ...).

    Returns the probabilities ``(N, C)`` the targets were chosen from, the targets, and
    ``{method: Explanation}`` per image (empty without ``methods``). When the first method predicts
    in its own forward pass (:attr:`~biasscope.explainers.Explainer.predicts_in_pass`: the CAMs) and
    the adapter forwards in fp32, prediction and explanation share that pass (one forward and one
    backward pass per batch). Otherwise the prediction is a separate forward pass, in the adapter's
    reduced precision when it has one (explanations then report fp32 probabilities of another pass).
    """
    explainers = _explainers(adapter, methods, params, allow_none=True)
    x = adapter.preprocess(list(images)) if inputs is None else inputs

    def by_probability(logits: torch.Tensor, start: int) -> torch.Tensor:
        return torch.as_tensor(select(torch.softmax(logits, dim=1), start), dtype=torch.long)

    first = explainers[0] if explainers else None
    results: list[dict[str, Explanation]] = [{} for _ in images]
    if first is not None and first.predicts_in_pass and adapter.fast_dtype is None:
        attr, seconds = _timed(first, lambda cb: first.explain_choosing_targets(x, by_probability, cb), progress)
        assert attr.logits is not None and attr.targets is not None  # explain_choosing_targets' contract
        probs, targets = torch.softmax(attr.logits, dim=1), attr.targets
        _check_batch(adapter, images, x, probs)
        _add(results, adapter, images, first, attr, seconds, x, probs, targets, faithfulness, progress)
        rest = explainers[1:]
    else:
        probs = adapter.probabilities(x)
        _check_batch(adapter, images, x, probs)
        targets = torch.as_tensor(select(probs, 0), dtype=torch.long)
        rest = explainers
    # explanations report fp32 probabilities (a reduced-precision prediction is not re-used for them)
    fp32_probs = adapter.probabilities(x, fast=False) if rest and adapter.fast_dtype is not None else probs
    for exp in rest:
        attr, seconds = _timed(exp, lambda cb, e=exp: e.run(x, targets, progress=cb), progress)
        _add(results, adapter, images, exp, attr, seconds, x, fp32_probs, targets, faithfulness, progress)
    return Predicted(probs, [int(t) for t in targets], results)


def _explainers(adapter: ModelAdapter, methods: str | Sequence[str], params: Mapping[str, Mapping[str, Any]] | None,
                *, allow_none: bool = False) -> list[Explainer]:
    """Every method's explainer (all validated before any time is spent)."""
    if isinstance(methods, str):
        methods = [m for m in methods.split(",") if m.strip()]
    if not methods and not allow_none:
        raise BiasscopeError("no explanation method given")
    params = dict(params or {})
    classes = [get_explainer(m) for m in methods]
    return [cls(adapter, **method_params(params, m, cls)) for m, cls in zip(methods, classes)]


def _check_batch(adapter: ModelAdapter, images: Sequence[Image.Image], x: torch.Tensor, probs: torch.Tensor) -> None:
    if x.shape[0] != len(images) or probs.shape != (len(images), adapter.num_classes):
        raise BiasscopeError(f"inputs {tuple(x.shape)} / probabilities {tuple(probs.shape)} do not match "
                             f"{len(images)} images and {adapter.num_classes} classes")


def _timed(exp: Explainer, work: Callable[[ProgressFn | None], Attribution],
           progress: MethodProgress | None) -> tuple[Attribution, float]:
    """``work(progress callback)``'s attribution and the seconds it took."""
    cb = (lambda f, _n=exp.name: progress(_n, f)) if progress else None
    t0 = time.perf_counter()
    attr = work(cb)
    return attr, time.perf_counter() - t0


def _add(results: list[dict[str, Explanation]], adapter: ModelAdapter, images: Sequence[Image.Image], exp: Explainer,
         attr: Attribution, seconds: float, x: torch.Tensor, probs: torch.Tensor, targets: torch.Tensor,
         faithfulness: bool, progress: MethodProgress | None) -> None:
    """One method's explanation of every image (heatmaps on each image's pixels) added to ``results``."""
    superpixels = attr.segments is not None and attr.weights is not None
    model_maps = attr.model_maps(adapter.input_size)
    faith = [{} for _ in images]
    if faithfulness:
        from .evaluation import deletion_insertion

        faith = deletion_insertion(adapter, x, targets, model_maps)
    for i, img in enumerate(images):
        seg_full = None
        if superpixels:
            seg_full = adapter.map_to_image(attr.segments[i].astype(np.float32), img, nearest=True,
                                            fill=-1).astype(np.int32)
            heat = np.where(seg_full >= 0, attr.weights[i][seg_full], 0.0).astype(np.float32)
        else:
            heat = adapter.map_to_image(model_maps[i], img)
        checks = dict(attr.checks[i]) if attr.checks else {}
        checks.update(faith[i])
        t = int(targets[i])
        results[i][exp.name] = Explanation(
            heatmap=heat,
            method=exp.name,
            label=exp.label,
            signed=exp.signed,
            target=t,
            target_name=adapter.class_names[t],
            target_probability=float(probs[i, t]),
            params=dict(exp.config),
            seconds=seconds / len(images),
            checks=checks,
            model_heatmap=model_maps[i],
            segments=seg_full,
        )
    if progress:
        progress(exp.name, 1.0)


__all__ += ["CancelledError"]
