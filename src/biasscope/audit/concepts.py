"""Concepts: a task label defined as a set of model classes (``doctor = stethoscope, lab coat``).

A prediction counts for a concept when its top-1 class (or any of its top-k classes, with
``match="topk"``) is in the set; the concept's score is the summed probability of its classes.
A label that is not a concept must be a model class (it is then a one-class concept).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from ..errors import BiasscopeError, ManifestError
from ..models.adapter import ModelAdapter

__all__ = [
    "NONE_LABEL",
    "ConceptAdapter",
    "LabelSpace",
    "Match",
    "concept_adapter",
    "load_concepts",
    "parse_concept",
]

Match = Literal["top1", "topk"]
#: predicted label of an image whose prediction matches no task label
NONE_LABEL = "(none)"

MSG_CONCEPT_SYNTAX = "concept {text!r}: expected NAME = class, class, ..."
MSG_UNKNOWN_LABELS = "label(s) that are neither concepts nor classes of model {model}"


def parse_concept(text: str) -> tuple[str, list[str]]:
    """``"doctor = stethoscope, lab coat"`` -> ``("doctor", ["stethoscope", "lab coat"])``."""
    name, sep, rest = text.partition("=")
    classes = [c.strip() for c in rest.split(",") if c.strip()]
    if not sep or not name.strip() or not classes:
        raise BiasscopeError(MSG_CONCEPT_SYNTAX.format(text=text))
    return name.strip(), classes


def load_concepts(
    source: str | Path | Mapping[str, Sequence[str] | str] | Iterable[str] | None,
) -> dict[str, list[str]]:
    """Concepts from a YAML file (``doctor: [stethoscope, lab coat]`` or ``doctor: "a, b"``,
    optionally under a top-level ``concepts:`` key), a mapping, or ``NAME = a, b`` strings."""
    if source is None:
        return {}
    if isinstance(source, str | Path) and (Path(source).suffix.lower() in (".yaml", ".yml") or Path(source).is_file()):
        import yaml

        p = Path(source)
        if not p.is_file():
            raise BiasscopeError(f"concepts file {p} not found")
        try:
            data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise BiasscopeError(f"concepts file {p} is not valid YAML: {exc}") from None
        if isinstance(data, dict) and set(data) == {"concepts"}:
            data = data["concepts"]
        if not isinstance(data, dict):
            raise BiasscopeError(f"concepts file {p}: expected a mapping NAME: [class, ...]")
        return load_concepts(data)
    if isinstance(source, str):
        source = [source]
    out: dict[str, list[str]] = {}
    if isinstance(source, Mapping):
        for name, classes in source.items():
            items = classes.split(",") if isinstance(classes, str) else list(classes or [])
            cls = [str(c).strip() for c in items if str(c).strip()]
            if not cls:
                raise BiasscopeError(f"concept {name!r} has no classes")
            out[str(name).strip()] = cls
        return out
    for text in source:
        name, cls = parse_concept(text)
        out[name] = cls
    return out


@dataclass
class LabelSpace:
    """The task labels of an audit resolved to class-index sets for one model."""

    labels: list[str]
    classes: dict[str, tuple[int, ...]]  # label -> model class indices
    top_k: int = 5
    match: Match = "top1"

    @classmethod
    def build(
        cls,
        adapter: ModelAdapter,
        labels: Sequence[str],
        concepts: Mapping[str, Sequence[str]] | None = None,
        *,
        top_k: int = 5,
        match: Match = "top1",
    ) -> LabelSpace:
        """Resolve every label (concept or class name/index); one error lists all unknown ones."""
        if match not in ("top1", "topk"):
            raise BiasscopeError(f"match must be 'top1' or 'topk', got {match!r}")
        if top_k < 1:
            raise BiasscopeError("top_k must be at least 1")
        concepts = dict(concepts or {})
        problems: list[str] = []
        resolved: dict[str, tuple[int, ...]] = {}
        for label in labels:
            names = concepts.get(label)
            try:
                if names is None:
                    resolved[label] = (adapter.class_index(label),)
                else:
                    resolved[label] = tuple(dict.fromkeys(adapter.class_index(n) for n in names))
            except BiasscopeError as exc:
                kind = "concept" if names is not None else "label"
                problems.append(f"{kind} {label!r}: {exc}")
        if problems:
            if any(p.startswith("label") for p in problems):
                problems.append(
                    "define labels that are not model classes as concepts, e.g. doctor = stethoscope, lab coat"
                )
            raise ManifestError(MSG_UNKNOWN_LABELS.format(model=adapter.name), problems)
        return cls(labels=list(labels), classes=resolved, top_k=min(top_k, adapter.num_classes), match=match)

    def score(self, probs: torch.Tensor | np.ndarray, label: str) -> np.ndarray:
        """Summed probability of ``label``'s classes for each row of ``probs`` ``(N, C)``."""
        p = np.asarray(probs, dtype=np.float64)
        return p[:, list(self.classes[label])].sum(axis=1)

    def evaluate(self, probs: torch.Tensor | np.ndarray) -> list[dict]:
        """Per image: top-k classes, per-label scores, top-1/top-k hits and the predicted label.

        The predicted label is, among the labels the prediction counts for (by ``match``), the one
        with the highest score; :data:`NONE_LABEL` when it counts for none.
        """
        p = np.asarray(probs, dtype=np.float64)
        k = self.top_k
        order = np.argsort(-p, axis=1, kind="stable")[:, :k]
        scores = {lab: self.score(p, lab) for lab in self.labels}
        out = []
        for i in range(p.shape[0]):
            top = [int(c) for c in order[i]]
            hit1 = {lab: top[0] in self.classes[lab] for lab in self.labels}
            hitk = {lab: any(c in self.classes[lab] for c in top) for lab in self.labels}
            counted = hit1 if self.match == "top1" else hitk
            cands = [lab for lab in self.labels if counted[lab]]
            pred = max(cands, key=lambda lab: scores[lab][i]) if cands else NONE_LABEL
            out.append(
                {
                    "top": top,
                    "top_probs": [float(p[i, c]) for c in top],
                    "scores": {lab: float(scores[lab][i]) for lab in self.labels},
                    "hit_top1": hit1,
                    "hit_topk": hitk,
                    "predicted": counted,
                    "pred_label": pred,
                }
            )
        return out


@dataclass(eq=False)
class ConceptAdapter(ModelAdapter):
    """A model with one more output: a concept (``doctor = stethoscope, lab coat``) as a target class.

    The extra column (the last index) is, in :meth:`probabilities`, the summed probability of the concept's
    classes, and in :meth:`logits` the sum of their logits. So every explainer, unchanged, explains the
    concept: gradient methods (CAMs, IG, SmoothGrad, ...) explain the sum of the classes' logits (their
    gradients add up; IG's completeness holds for that sum), perturbation methods (LIME, Kernel SHAP,
    occlusion on probabilities) and deletion/insertion use the summed probability. The base model's own
    outputs are unchanged (ONNX Runtime and precision settings still apply to them).
    """

    base: ModelAdapter | None = field(default=None, repr=False)
    concept: str = ""
    concept_classes: tuple[int, ...] = ()

    @property
    def concept_index(self) -> int:
        """The index of the concept's column."""
        return self.num_classes - 1

    def describe(self) -> str:
        """The concept in words: what its probability is and what its heatmaps explain."""
        assert self.base is not None
        names = [self.base.class_names[i] for i in self.concept_classes]
        return (f"concept {self.concept} = {' + '.join(names)}: its probability is the sum of these classes' "
                "probabilities; gradient heatmaps explain the sum of their logits, perturbation methods the "
                "summed probability")

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        assert self.base is not None
        z = self.base.logits(x)
        return torch.cat([z, z[:, list(self.concept_classes)].sum(1, keepdim=True)], dim=1)

    @torch.no_grad()
    def probabilities(self, x: torch.Tensor, *, batch_size: int | None = None,
                      fast: bool | None = None) -> torch.Tensor:
        assert self.base is not None
        p = self.base.probabilities(x, batch_size=batch_size, fast=fast)
        return torch.cat([p, p[:, list(self.concept_classes)].sum(1, keepdim=True)], dim=1)

    def batch_size(self, kind: str = "forward", work: int | None = None, engine=None) -> int:
        assert self.base is not None
        return self.base.batch_size(kind, work, engine)

    def to_dict(self) -> dict:
        assert self.base is not None
        return self.base.to_dict() | {"concept": {"name": self.concept, "classes": [
            self.base.class_names[i] for i in self.concept_classes]}}


def concept_adapter(adapter: ModelAdapter, name: str, classes: Sequence[str | int]) -> ConceptAdapter:
    """``adapter`` with concept ``name`` (the union of ``classes``) as an extra, last target class.

    Unknown classes raise with did-you-mean suggestions (:meth:`ModelAdapter.class_index`).
    """
    if isinstance(adapter, ConceptAdapter):
        raise BiasscopeError("explain one concept at a time")
    problems = []
    idx: list[int] = []
    for c in classes:
        try:
            idx.append(adapter.class_index(c))
        except BiasscopeError as exc:
            problems.append(str(exc))
    if problems:
        raise BiasscopeError(f"concept {name!r}: " + "; ".join(problems))
    if not idx:
        raise BiasscopeError(f"concept {name!r} has no classes")
    kw = {f.name: getattr(adapter, f.name) for f in dataclasses.fields(ModelAdapter)
          if f.init and not f.name.startswith("_")}
    kw["class_names"] = [*adapter.class_names, name]
    return ConceptAdapter(**kw, base=adapter, concept=name, concept_classes=tuple(dict.fromkeys(idx)))
