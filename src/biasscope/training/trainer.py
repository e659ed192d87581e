"""Fine-tune a torchvision backbone on a manifest, with group-aware sampling, and save a checkpoint.

The saved ``model.pt`` is a biasscope checkpoint (:func:`biasscope.models.save_checkpoint`): the
state dict of ``build_architecture(arch, n_classes)``, the class names and the preprocessing, so
``--model out/model.pt`` works in every command. Beside it: ``history.json`` and ``train_log.jsonl``
(loss and accuracy per epoch, overall and per group on validation), ``curves.png``/``curves.svg``,
``split.csv`` (which image went where) and ``config.json``.

Determinism: the weights' initialisation, the split, the sampling, the augmentation and dropout all
draw from generators seeded by ``seed``; two runs with the same inputs and seed on the same device
give identical weights and metrics (on CUDA, cuDNN is put in deterministic mode for the run).
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from ..audit.manifest import Manifest
from ..errors import BiasscopeError
from ..models.adapter import IMAGENET_MEAN, IMAGENET_STD
from .augment import augment_batch
from .backbone import EVAL_CHUNK, build_backbone, cache_head_inputs, head_name
from .config import EpochProgress, TrainConfig, TrainResult
from .curves import write_curves
from .data import Example, examples_from_manifest, load_tensors, load_training_manifest, stratified_split
from .sampling import (
    balanced_weights,
    draw_epoch,
    inverse_frequency_weights,
    parse_proportions,
    skew_subset,
    underrepresented_groups,
)

__all__ = ["CHECKPOINT_NAME", "train"]

CHECKPOINT_NAME = "model.pt"


@contextlib.contextmanager
def _deterministic(device: torch.device) -> Iterator[None]:
    if device.type != "cuda":
        yield
        return
    old = torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = True, False
    try:
        yield
    finally:
        torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = old


def _mf_by_group(y: np.ndarray, pred: np.ndarray, loss: np.ndarray, groups: np.ndarray) -> dict:
    """Per-group n, accuracy and mean loss through fairlearn's MetricFrame."""
    from fairlearn.metrics import MetricFrame, count
    from sklearn.metrics import accuracy_score

    from ..audit.metrics import mean_value

    mf = MetricFrame(
        metrics={"n": count, "accuracy": accuracy_score, "loss": mean_value},
        y_true=y, y_pred=pred, sensitive_features=groups,
        sample_params={"loss": {"values": loss}},
    )
    return {str(g): {"n": int(r["n"]), "accuracy": float(r["accuracy"]), "loss": float(r["loss"])}
            for g, r in mf.by_group.iterrows()}


def train(
    manifest: str | Path | Manifest,
    out_dir: str | Path,
    config: TrainConfig | None = None,
    *,
    root: str | Path | None = None,
    progress: Callable[[EpochProgress], None] | None = None,
    show_progress: bool = True,
    plots: bool = True,
) -> TrainResult:
    """Train ``config.backbone`` on ``manifest`` and write the checkpoint, log and curves to ``out_dir``.

    ``progress`` is called after each batch and epoch (it may raise to stop training). With
    ``show_progress`` a tqdm bar is drawn per epoch. A frozen backbone without augmentation is run
    once over the images and only the head is trained on the cached features (same result, faster).
    ``plots=False`` skips the PNG/SVG curves (their numbers are still written to ``curves.json``).
    """
    from tqdm.auto import tqdm

    from ..models import resolve_device, save_checkpoint

    cfg = copy.deepcopy(config) if config is not None else TrainConfig()
    if isinstance(cfg.proportions, str) or cfg.proportions:
        cfg.proportions = parse_proportions(cfg.proportions)
    cfg.validate()
    device = resolve_device(cfg.device)
    m = load_training_manifest(manifest, group=cfg.group, target=cfg.target, root=root)
    examples, class_names = examples_from_manifest(m, group=cfg.group, target=cfg.target)
    groups = sorted({e.group for e in examples})
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)

    # --- split and sampling (training part only)
    train_idx, val_idx = stratified_split(examples, val_fraction=cfg.val_fraction, seed=cfg.seed)
    if cfg.sampling == "skew":
        train_idx = skew_subset(examples, train_idx, cfg.proportions or {}, seed=cfg.seed + 1)
        if not train_idx:
            raise BiasscopeError("the skewed training sample is empty; check the proportions")
    probs = None
    if cfg.sampling in ("balanced-group", "balanced-label-group"):
        probs = balanced_weights(examples, train_idx, cfg.sampling.removeprefix("balanced-"))
    loss_w = torch.ones(len(examples), dtype=torch.float32)
    if cfg.reweight != "none":
        loss_w[train_idx] = torch.from_numpy(inverse_frequency_weights(examples, train_idx, cfg.reweight)).float()
    if cfg.strong_augment == ["auto"]:
        strong_groups = underrepresented_groups(examples, train_idx)
    else:
        unknown = sorted(set(cfg.strong_augment) - set(groups))
        if unknown:
            raise BiasscopeError(f"strong augmentation for unknown group(s) {', '.join(unknown)}; "
                                 f"groups: {', '.join(groups)}")
        strong_groups = sorted(set(cfg.strong_augment))
    strong_mask = torch.tensor([e.group in strong_groups for e in examples], dtype=torch.bool)
    _write_split(out / "split.csv", examples, train_idx, val_idx)

    # --- model
    torch.manual_seed(cfg.seed)
    if device.type == "cuda":
        torch.cuda.manual_seed_all(cfg.seed)
    model = build_backbone(cfg.backbone, len(class_names), pretrained=cfg.pretrained, download=cfg.download)
    arch = cfg.backbone.split(":")[0].strip().lower()
    hname = head_name(model)
    head = dict(model.named_modules())[hname]
    if cfg.freeze_backbone:
        for n, p in model.named_parameters():
            p.requires_grad_(n.startswith(hname + "."))
    model.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    if cfg.optimizer == "adam":
        opt: torch.optim.Optimizer = torch.optim.Adam(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    else:
        opt = torch.optim.SGD(params, lr=cfg.lr, momentum=0.9, weight_decay=cfg.weight_decay)
    mean_t = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std_t = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)

    def normalize(x01: torch.Tensor) -> torch.Tensor:
        return (x01 - mean_t) / std_t

    images = load_tensors(examples, cfg.input_size)
    gen = torch.Generator().manual_seed(cfg.seed + 2)
    features = None
    uses_aug = cfg.augment != "none" or bool(strong_groups)
    if cfg.freeze_backbone and not uses_aug:
        model.eval()
        features = cache_head_inputs(model, head, images, normalize, device)

    y_all = torch.tensor([e.y for e in examples], dtype=torch.long)
    g_all = np.array([e.group for e in examples])

    def set_mode() -> None:
        if cfg.freeze_backbone:
            model.eval()
            head.train()
        else:
            model.train()

    def forward(idx: Sequence[int], *, training: bool) -> torch.Tensor:
        it = torch.as_tensor(list(idx), dtype=torch.long)
        if features is not None:
            return head(features[it.to(features.device)])
        if training and uses_aug:
            x = augment_batch(images[it], mode=cfg.augment, strong=strong_mask[it], generator=gen)
        else:
            x = images[it].float().div(255.0)
        out_ = model(normalize(x).to(device))
        if isinstance(out_, tuple):
            out_ = out_[0]
        return out_.logits if hasattr(out_, "logits") else out_

    @torch.no_grad()
    def evaluate(idx: Sequence[int]) -> dict | None:
        if not idx:
            return None
        model.eval()
        losses, preds = [], []
        for i in range(0, len(idx), EVAL_CHUNK):
            chunk = list(idx[i : i + EVAL_CHUNK])
            logits = forward(chunk, training=False).float().cpu()
            y = y_all[chunk]
            losses.append(F.cross_entropy(logits, y, reduction="none"))
            preds.append(logits.argmax(1))
        loss = torch.cat(losses).numpy().astype(np.float64)
        pred = torch.cat(preds).numpy()
        y = y_all[list(idx)].numpy()
        return {"loss": float(loss.mean()), "accuracy": float((pred == y).mean()),
                "by_group": _mf_by_group(y, pred, loss, g_all[list(idx)])}

    history: list[dict] = []
    best_loss, best_epoch, best_state, bad_epochs, stopped = math.inf, 0, None, 0, False
    steps = math.ceil(len(train_idx) / cfg.batch_size)
    log_path = out / "train_log.jsonl"
    log_path.write_text("", encoding="utf-8")
    with _deterministic(device):
        for epoch in range(1, cfg.epochs + 1):
            t0 = time.perf_counter()
            order = draw_epoch(train_idx, probs, gen)
            set_mode()
            tot_loss, tot_n, correct = 0.0, 0, 0
            bar = tqdm(total=steps, desc=f"epoch {epoch}/{cfg.epochs}", unit="batch", leave=False,
                       disable=not show_progress)
            try:
                for step in range(steps):
                    idx = order[step * cfg.batch_size : (step + 1) * cfg.batch_size]
                    logits = forward(idx, training=True)
                    y = y_all[idx].to(logits.device)
                    per = F.cross_entropy(logits, y, reduction="none")
                    loss = (per * loss_w[idx].to(per.device)).mean()
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    opt.step()
                    tot_loss += float(per.detach().sum())
                    tot_n += len(idx)
                    correct += int((logits.detach().argmax(1) == y).sum())
                    bar.update(1)
                    bar.set_postfix(loss=f"{tot_loss / tot_n:.4f}")
                    if progress:
                        progress(EpochProgress(epoch, cfg.epochs, step + 1, steps, tot_loss / tot_n, "batch"))
            finally:
                bar.close()
            val = evaluate(val_idx)
            rec = {
                "epoch": epoch,
                "train_loss": tot_loss / max(tot_n, 1),
                "train_accuracy": correct / max(tot_n, 1),
                "val_loss": val["loss"] if val else None,
                "val_accuracy": val["accuracy"] if val else None,
                "val_by_group": val["by_group"] if val else {},
                "seconds": time.perf_counter() - t0,
            }
            history.append(rec)
            with log_path.open("a", encoding="utf-8") as fh:
                fh.write(json.dumps(rec) + "\n")
            if show_progress:
                groups_txt = " ".join(f"{g}={d['accuracy']:.3f}" for g, d in rec["val_by_group"].items())
                tqdm.write(f"epoch {epoch}: train loss {rec['train_loss']:.4f} acc {rec['train_accuracy']:.3f}"
                           + (f" | val loss {rec['val_loss']:.4f} acc {rec['val_accuracy']:.3f} ({groups_txt})"
                              if val else ""))
            if progress:
                progress(EpochProgress(epoch, cfg.epochs, steps, steps, rec["train_loss"], "epoch", rec))
            if val is None:
                best_epoch = epoch
                continue
            if val["loss"] < best_loss - cfg.min_delta:
                best_loss, best_epoch, bad_epochs = val["loss"], epoch, 0
                best_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
            else:
                bad_epochs += 1
                if cfg.patience is not None and bad_epochs >= cfg.patience:
                    stopped = epoch < cfg.epochs
                    break
    if best_state is not None:
        model.load_state_dict(best_state)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    best = next((h for h in history if h["epoch"] == best_epoch), history[-1])
    ckpt = out / CHECKPOINT_NAME
    save_checkpoint(
        ckpt, arch=arch, state_dict=state, class_names=class_names, input_size=cfg.input_size,
        mean=IMAGENET_MEAN, std=IMAGENET_STD,
        extra={"training": _jsonable(cfg.to_dict()), "best_epoch": best_epoch, "groups": groups,
               "manifest_fingerprint": m.fingerprint, "val_accuracy": best["val_accuracy"],
               "val_by_group": _jsonable(best["val_by_group"])},
    )
    summary = {"config": cfg.to_dict(), "class_names": class_names, "groups": groups, "best_epoch": best_epoch,
               "stopped_early": stopped, "n_train": len(train_idx), "n_val": len(val_idx),
               "strong_augment_groups": strong_groups, "feature_cache": features is not None,
               "train_counts": _counts(examples, train_idx), "val_counts": _counts(examples, val_idx),
               "history": history}
    (out / "history.json").write_text(json.dumps(summary, indent=2), encoding="utf-8")
    (out / "config.json").write_text(json.dumps(cfg.to_dict(), indent=2), encoding="utf-8")
    write_curves(history, out / "curves", best_epoch=best_epoch, images=plots)
    return TrainResult(out_dir=out, checkpoint=ckpt, class_names=class_names, groups=groups, history=history,
                       best_epoch=best_epoch, stopped_early=stopped, n_train=len(train_idx), n_val=len(val_idx),
                       strong_groups=strong_groups, feature_cache=features is not None)


def _jsonable(d: Any) -> Any:
    return json.loads(json.dumps(d))


def _counts(examples: Sequence[Example], idx: Sequence[int]) -> dict:
    """Images per ``label x group`` cell: ``{label: {group: n}}``."""
    out: dict = {}
    for i in idx:
        e = examples[i]
        out.setdefault(e.label, {}).setdefault(e.group, 0)
        out[e.label][e.group] += 1
    return out


def _write_split(path: Path, examples: Sequence[Example], train_idx: Sequence[int], val_idx: Sequence[int]) -> None:
    import csv

    where = {i: "train" for i in train_idx} | {i: "val" for i in val_idx}
    with path.open("w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh)
        w.writerow(["path", "label", "group", "synthetic", "split"])
        for e in examples:
            w.writerow([e.path, e.label, e.group, int(e.synthetic), where.get(e.index, "unused")])
