"""Models from other libraries: timm (``timm:NAME``), Hugging Face transformers image classifiers
(``hf:ID`` or a local folder) and open_clip zero-shot CLIP classifiers (``clip:ARCH``).

This module holds what the builders share (:class:`ExternalModel`, the offline cache look-ups) and the
CLIP builder; the timm and transformers builders are in :mod:`biasscope.models.timm_hf`.

All load offline from what is already on the machine (the Hugging Face hub cache, torch hub's cache,
open_clip's cache, or a file the user names) and download only with ``download=True``; a missing
file is reported with its name and the folder it was looked for in. Each returns a plain module
mapping a normalised ``(N, 3, S, S)`` batch to logits ``(N, C)``, with its own preprocessing and
class names, so every explanation method works on it unchanged.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from ..errors import ModelError, WeightsMissingError

__all__ = [
    "DEFAULT_CLIP_PROMPTS",
    "ExternalModel",
    "ZeroShotCLIP",
    "build_clip",
    "is_external_spec",
    "parse_classes",
]

#: CLIP's zero-shot recipe averages the text embeddings of several prompts per class; these are
#: generic photo prompts (CLIP's ImageNet list is tuned to objects, not people)
DEFAULT_CLIP_PROMPTS: tuple[str, ...] = (
    "a photo of a {}.",
    "a photo of the {}.",
    "a good photo of a {}.",
    "a bad photo of a {}.",
    "a close-up photo of a {}.",
    "a cropped photo of a {}.",
)

_EXTRAS = {"timm": "timm", "transformers": "hf", "open_clip": "clip"}


@dataclass
class ExternalModel:
    """What a builder hands to ``load_model``."""

    module: nn.Module
    class_names: list[str]
    input_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    name: str
    source: str
    note: str = ""


def is_external_spec(spec: str) -> bool:
    """``timm:``, ``hf:``, ``clip:`` prefixes, or a local folder holding a transformers ``config.json``."""
    low = spec.lower()
    return low.startswith(("timm:", "hf:", "clip:")) or (Path(spec).is_dir() and (Path(spec) / "config.json").is_file())


def _require(module: str):
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise ModelError(
            f"{module} is not installed; install it with: pip install 'biasscope[models]'"
        ) from None


def _hf_cached(repo_id: str, filenames: Sequence[str]) -> str | None:
    """The first of ``filenames`` of ``repo_id`` in the local Hugging Face hub cache, else None."""
    from huggingface_hub import try_to_load_from_cache

    for f in filenames:
        path = try_to_load_from_cache(repo_id, f)
        if isinstance(path, str) and os.path.isfile(path):
            return path
    return None


def _hf_folder(repo_id: str) -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HUB_CACHE) / ("models--" + repo_id.replace("/", "--")) / "snapshots" / "<revision>"


def _load_sd(path: str | Path) -> dict[str, torch.Tensor]:
    if str(path).endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(str(path))
    from .files import load_state_dict

    return load_state_dict(path)


# ---------------------------------------------------------------------------------------------- open_clip
def parse_classes(classes: str | Sequence[str] | None) -> list[str]:
    """``"doctor,nurse"``, a list, or a file with one class per line (``@file`` or an existing path)."""
    if classes is None:
        return []
    if isinstance(classes, str):
        path = classes[1:] if classes.startswith("@") else classes
        if os.path.isfile(path):
            items = Path(path).read_text(encoding="utf-8").splitlines()
        else:
            items = classes.split(",")
    else:
        items = list(classes)
    out = [c.strip() for c in items if c.strip()]
    if len(set(map(str.lower, out))) != len(out):
        raise ModelError(f"the classes must be distinct, got {', '.join(out)}")
    return out


class ZeroShotCLIP(nn.Module):
    """CLIP as a classifier: logits are ``logit_scale * cos(image embedding, class text embedding)``.

    ``text`` holds one L2-normalised embedding per class (the normalised mean of its prompt embeddings,
    CLIP's zero-shot recipe); only the image tower runs at prediction time.
    """

    def __init__(self, visual: nn.Module, text: torch.Tensor, logit_scale: float,
                 text_encoder: Callable[[Sequence[str], Sequence[str]], torch.Tensor] | None = None) -> None:
        super().__init__()
        self.visual = visual
        self.register_buffer("text", text)
        self.logit_scale = float(logit_scale)
        #: ``(classes, prompts) -> (C, D)`` text embeddings (the text tower and tokenizer, kept outside the
        #: module tree so hooks, exports and weight digests see the image tower only); None after pickling
        self.text_encoder = text_encoder

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state["text_encoder"] = None  # the text tower stays where it was built
        return state

    def with_classes(self, classes: Sequence[str], prompts: Sequence[str] | None = None) -> ZeroShotCLIP:
        """The same image tower (shared, not copied) over other classes: only the text embeddings are computed."""
        if self.text_encoder is None:
            raise ModelError("this CLIP model has no text tower here (it was pickled); load it again to change "
                             "its classes")
        text = self.text_encoder(list(classes), list(prompts or DEFAULT_CLIP_PROMPTS)).to(self.text.device)
        return ZeroShotCLIP(self.visual, text, self.logit_scale, self.text_encoder).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f = self.visual(x)
        if isinstance(f, tuple):
            f = f[0]
        f = f / f.norm(dim=-1, keepdim=True)
        return self.logit_scale * f @ self.text.T


@torch.no_grad()
def class_text_embeddings(model: nn.Module, tokenizer, classes: Sequence[str], prompts: Sequence[str]) -> torch.Tensor:
    """``(C, D)``: per class, the normalised mean of the normalised embeddings of its prompts.

    Classes are encoded in chunks of about 256 prompt texts (one text-tower batch each).
    """
    out = []
    step = max(1, 256 // max(len(prompts), 1))
    device = next(iter(model.parameters())).device
    for i in range(0, len(classes), step):
        chunk = classes[i : i + step]
        texts = [p.format(c) if "{}" in p else f"{p} {c}" for c in chunk for p in prompts]
        e = model.encode_text(tokenizer(texts).to(device)).float()
        e = e / e.norm(dim=-1, keepdim=True)
        m = e.reshape(len(chunk), len(prompts), -1).mean(1)
        out.append(m / m.norm(dim=-1, keepdim=True))
    return torch.cat(out)


def build_clip(
    arch: str,
    *,
    pretrained: str | None,
    classes: str | Sequence[str] | None,
    prompts: Sequence[str] | None = None,
    download: bool = False,
) -> ExternalModel:
    """An open_clip zero-shot classifier over ``classes`` (see :class:`ZeroShotCLIP`).

    ``pretrained``: an open_clip tag (``laion2b_s34b_b79k``, found in the local caches unless
    ``download``), a weights file, or ``random`` (random initialisation under seed 0: mechanics only,
    for tests).
    """
    open_clip = _require("open_clip")
    names = parse_classes(classes)
    if len(names) < 2:
        raise ModelError('a CLIP classifier needs at least two classes: --classes "doctor,nurse" (or a file)')
    if arch not in open_clip.list_models():
        raise ModelError(f"open_clip has no model {arch!r}; e.g. ViT-B-32, ViT-B-16, ViT-L-14")
    tags = open_clip.list_pretrained_tags_by_model(arch)
    if not pretrained:
        raise ModelError(f"clip:{arch} needs --pretrained TAG (one of {', '.join(tags) or 'none'}) or a weights file")
    kw: dict = {}
    note = ""
    tag_cfg = open_clip.get_pretrained_cfg(arch, pretrained) if pretrained in tags else {}
    if pretrained == "random":
        ckpt, source, note = None, "random initialisation", "random CLIP weights: mechanics only"
    elif os.path.isfile(pretrained):
        ckpt, source = pretrained, pretrained
    elif tag_cfg:
        ckpt = _clip_cached(tag_cfg)
        source = ckpt or f"open_clip {arch} {pretrained} (downloaded)"
        if ckpt is None:
            if not download:
                raise WeightsMissingError(
                    f"weights for clip:{arch} {pretrained} are not on this machine: expected "
                    f"{_clip_expected(tag_cfg)}. Copy the file there, pass --download to fetch it, or give "
                    "the file itself with --pretrained FILE"
                )
            ckpt = pretrained
        kw["force_quick_gelu"] = bool(tag_cfg.get("quick_gelu", False))
    else:
        raise ModelError(f"unknown pretrained tag {pretrained!r} for clip:{arch}; choose one of {', '.join(tags)}, "
                         "a weights file, or 'random'")
    try:
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)  # 'random' is the same model in every process (resumable audits, tests)
            model = open_clip.create_model(arch, pretrained=ckpt, **kw)
    except Exception as exc:  # corrupt or mismatched checkpoint
        raise ModelError(f"could not build clip:{arch} from {source}: {str(exc).splitlines()[0][:300]}") from exc
    model.eval()
    try:
        tokenizer = open_clip.get_tokenizer(arch)
    except Exception as exc:  # tokenizers of some architectures live on the Hugging Face hub
        raise WeightsMissingError(
            f"the text tokenizer of clip:{arch} is not on this machine ({str(exc).splitlines()[0][:200]}); "
            "run once with --download while online, or use an architecture whose tokenizer ships with "
            "open_clip (ViT-B-32, ViT-B-16, ViT-L-14, ...)"
        ) from None
    text = class_text_embeddings(model, tokenizer, names, list(prompts or DEFAULT_CLIP_PROMPTS))
    pcfg = open_clip.get_model_preprocess_cfg(model)
    mean = tuple(tag_cfg.get("mean") or pcfg.get("mean"))
    std = tuple(tag_cfg.get("std") or pcfg.get("std"))
    size = pcfg.get("size", 224)
    size = size[0] if isinstance(size, list | tuple) else size
    module = ZeroShotCLIP(model.visual, text, float(model.logit_scale.detach().exp()),
                          functools.partial(class_text_embeddings, model, tokenizer))
    return ExternalModel(module.eval(), names, int(size), mean, std, f"clip:{arch}", source, note)  # type: ignore[arg-type]


def _clip_hf(tag_cfg: dict) -> tuple[str, str] | None:
    hub = tag_cfg.get("hf_hub")
    if not hub:
        return None
    repo, filename = os.path.split(hub.rstrip("/") if hub.endswith(".bin") or hub.endswith(".safetensors") else hub)
    return repo.rstrip("/"), filename


def _clip_cached(tag_cfg: dict) -> str | None:
    hf = _clip_hf(tag_cfg)
    if hf:
        repo, filename = hf
        names = [filename] if filename else ["open_clip_model.safetensors", "open_clip_pytorch_model.bin"]
        found = _hf_cached(repo, names)
        if found:
            return found
    url = tag_cfg.get("url")
    if url:
        cand = Path(os.path.expanduser("~/.cache/clip")) / os.path.basename(url)
        if cand.is_file():
            return str(cand)
    return None


def _clip_expected(tag_cfg: dict) -> str:
    hf = _clip_hf(tag_cfg)
    if hf:
        repo, filename = hf
        return f"{filename or 'open_clip_model.safetensors (or open_clip_pytorch_model.bin)'} in {_hf_folder(repo)}"
    url = tag_cfg.get("url", "")
    return f"{os.path.basename(url)} in {Path(os.path.expanduser('~/.cache/clip'))}"
