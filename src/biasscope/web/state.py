"""Shared server state: a cache of loaded models and a private, bounded store of uploaded images.

Both are shared by all request threads and job workers. Models are loaded once per name and kept;
images live as PNG files in a private temporary folder (mode 0700), expire after a while and are
evicted oldest-first beyond a count limit, so memory and disk stay bounded however many uploads come.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import tempfile
import threading
import time
import weakref
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

from PIL import Image

from ..errors import BiasscopeError, ModelError, WeightsMissingError
from ..faces.attribute import FACE_MODELS, face_model_status
from ..models import SUPPORTED_MODELS, ModelAdapter, load_model, zoo_status

__all__ = ["MAX_CLASS_CHARS", "MAX_CLIP_CLASSES", "MAX_DERIVED_MODELS", "ImageRecord", "ImageStore", "ModelRegistry",
           "NotFoundError", "clip_class_list"]

#: CLIP class sets defined on the page kept at once (each holds only its text embeddings: the image
#: tower is the served CLIP model's, shared); the least recently used one is dropped beyond this
MAX_DERIVED_MODELS = 8
#: bounds of a class set defined on the page: classes per set, characters per class name or prompt, prompts
MAX_CLIP_CLASSES = 1000
MAX_CLASS_CHARS = 200
MAX_CLIP_PROMPTS = 16


def clip_class_list(value: object, name: str = "classes", lo: int = 2, hi: int = MAX_CLIP_CLASSES) -> list[str]:
    """``lo``..``hi`` non-empty, distinct (ignoring case) strings of at most MAX_CLASS_CHARS characters, from
    a JSON list or a comma-separated string; anything else is a 400 saying what to send."""
    if isinstance(value, str):
        items = value.split(",") if name == "classes" else [value]
    elif isinstance(value, list) and all(isinstance(v, str) for v in value):
        items = value
    else:
        raise BiasscopeError(f"'{name}' must be a list of strings (or one comma-separated string)")
    out = [v.strip() for v in items]
    if any(not v for v in out):
        raise BiasscopeError(f"'{name}' has an empty entry; remove it")
    long = [v for v in out if len(v) > MAX_CLASS_CHARS]
    if long:
        raise BiasscopeError(f"'{name}': {long[0][:40]!r}... is longer than {MAX_CLASS_CHARS} characters")
    if not lo <= len(out) <= hi:
        raise BiasscopeError(f"'{name}' must have {lo} to {hi} entries, got {len(out)}")
    seen: set[str] = set()
    dup = [v for v in out if v.lower() in seen or seen.add(v.lower())]  # type: ignore[func-returns-value]
    if dup:
        raise BiasscopeError(f"'{name}' must be distinct; {dup[0]!r} is given twice")
    return out


class NotFoundError(BiasscopeError):
    """A referenced image, job or method result does not exist (any more)."""

    status = 404


@dataclass(frozen=True)
class DefaultChoice:
    """Which model the app uses by default, and why (when it is not the configured one)."""

    name: str
    ready: bool
    note: str  # why a fallback is used, or why nothing is ready; empty in the normal case
    fix: str


class ModelRegistry:
    """Loaded models, one per name, shared across requests and threads.

    ``extra`` maps additional names to factories (a user's own model given to ``biasscope serve``,
    tiny models in tests); the documented torchvision models are loaded with :func:`load_model`.
    """

    def __init__(
        self,
        *,
        default: str = "resnet18",
        fallbacks: tuple[str, ...] = ("mobilenet_v2",),
        extra: dict[str, Callable[[], ModelAdapter]] | None = None,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        self._extra = dict(extra or {})
        self._device = device
        self._precision = precision
        self._default = default
        self._fallbacks = tuple(fallbacks)
        self._models: dict[str, ModelAdapter] = {}
        self._locks: dict[str, threading.Lock] = {}
        self._lock = threading.Lock()
        #: CLIP class sets defined through the API: name -> (base model name, adapter), least recently used first
        self._derived: OrderedDict[str, tuple[str, ModelAdapter]] = OrderedDict()

    @property
    def names(self) -> list[str]:
        """Every model name the app accepts: extra models first, then the documented zoo."""
        zoo = [n for n in SUPPORTED_MODELS if n not in self._extra]
        return list(self._extra) + list(self._derived) + zoo + [n for n in FACE_MODELS if n not in self._extra]

    def status(self, name: str) -> dict:
        """``{name, ready, loaded, reason, fix, source}`` for one model (no loading); a loaded model
        adds ``backend`` and ``precision``: which engine and dtype its gradient-free forwards use and why."""
        derived = self._derived.get(name)
        if derived is not None:
            base, adapter = derived
            return {"name": name, "ready": True, "loaded": True, "reason": "", "fix": "", "base": base,
                    "source": f"{base} over {adapter.num_classes} classes set through the API",
                    "backend": adapter.to_dict()["backend"], "precision": adapter.to_dict()["precision"]}
        adapter = self._models.get(name)
        if name in self._extra:
            out = {"name": name, "ready": True, "loaded": adapter is not None, "reason": "", "fix": "",
                   "source": "configured"}
        elif name in FACE_MODELS:
            out = {"name": name, "loaded": adapter is not None, **face_model_status(name)}
        else:
            info = zoo_status(name)
            out = {
                "name": name,
                "ready": info.ready,
                "loaded": adapter is not None,
                "reason": info.reason,
                "fix": info.fix,
                "source": f"torchvision {name}.{info.weights}" if info.ready else "",
            }
        if adapter is not None:
            d = adapter.to_dict()
            out |= {"backend": d["backend"], "precision": d["precision"]}
        return out

    def default_choice(self) -> DefaultChoice:
        """The configured default if it is ready, else the first ready fallback, with the reason."""
        first = self.status(self._default)
        if first["ready"]:
            return DefaultChoice(self._default, True, "", "")
        for name in self._fallbacks:
            if name in self.names and self.status(name)["ready"]:
                note = (
                    f"{self._default} weights are not on this machine, so {name} (real ImageNet weights) "
                    f"is used instead. To use {self._default}: {first['fix']}"
                )
                return DefaultChoice(name, True, note, first["fix"])
        return DefaultChoice(self._default, False, first["reason"], first["fix"])

    def check_name(self, name: str) -> str:
        key = str(name).strip().lower() if name not in self._extra and name not in self._derived else name
        if key not in self.names:
            base = str(name).rpartition("@")[0]
            if base in self._extra and base.startswith("clip:"):
                raise BiasscopeError(f"model {name!r} was a class set of {base} that has been dropped for newer "
                                     f"ones (at most {MAX_DERIVED_MODELS} are kept); set its classes again")
            raise BiasscopeError(f"unknown model {name!r}; choose from {', '.join(self.names)}")
        return key

    def get(self, name: str) -> ModelAdapter:
        """The loaded model ``name`` (loaded on first use; concurrent first uses load once)."""
        key = self.check_name(name)
        derived = self._derived.get(key)
        if derived is not None:
            with contextlib.suppress(KeyError):  # dropped meanwhile: this caller still gets it
                self._derived.move_to_end(key)
            return derived[1]
        model = self._models.get(key)
        if model is not None:
            return model
        with self._lock:
            lock = self._locks.setdefault(key, threading.Lock())
        with lock:
            if key not in self._models:
                if key in self._extra:
                    adapter = self._extra[key]()
                else:
                    try:
                        adapter = load_model(key, device=self._device, precision=self._precision)
                    except WeightsMissingError as exc:
                        st = self.status(key)
                        raise WeightsMissingError(f"{exc}. Fix: {st['fix']}") from None
                    except ModelError:
                        raise
                self._models[key] = adapter
            return self._models[key]

    def loaded(self) -> list[str]:
        return list(self._models) + list(self._derived)

    def derive_clip(self, base: str, classes: object, prompts: object = None) -> str:
        """A model over other classes made from the served CLIP model ``base``: its image tower is shared
        and only the class text embeddings are computed (CLIP's zero-shot recipe, as ``--classes``). The same
        base, classes and prompts give the same name; at most MAX_DERIVED_MODELS are kept (LRU)."""
        import hashlib
        import json

        from ..models.external import ZeroShotCLIP

        names = clip_class_list(classes)
        tmpl = None if prompts in (None, "", []) else clip_class_list(prompts, "prompts", 1, MAX_CLIP_PROMPTS)
        for p in tmpl or []:
            if p.replace("{}", "").count("{") or p.replace("{}", "").count("}") or p.count("{}") > 1:
                raise BiasscopeError(f"prompt {p!r}: use at most one '{{}}' where the class goes, and no other braces")
        key = self.check_name(base)
        if key in self._derived:  # a class set of a class set: derive from the served model itself
            key = self._derived[key][0]
        root = self.get(key)
        if not isinstance(root.model, ZeroShotCLIP) or root.model.text_encoder is None:
            raise BiasscopeError(f"model {base!r} is not a CLIP model; classes can be set only for a served "
                                 "clip:ARCH model (biasscope serve --model clip:ViT-B-32 ...)")
        digest = hashlib.blake2b(json.dumps([key, names, tmpl]).encode(), digest_size=5).hexdigest()
        name = f"{key}@{digest}"
        with self._lock:
            if name in self._derived:
                self._derived.move_to_end(name)
                return name
        module = root.model.with_classes(names, tmpl)  # the text tower only
        # the hook lock is the base's own (replace keeps it): layer hooks go on the shared image tower
        adapter = root.with_model(module, name=name, class_names=names, onnx_source=None)
        known = root.batch_sizes  # same image tower, same batch sizes
        adapter.set_batch_sizes(forward=known.get("forward"), backward=known.get("backward"),
                                onnxruntime=known.get("forward:onnxruntime"))
        adapter.source = f"{root.source} (classes set through the API)"
        with self._lock:
            self._derived[name] = (key, adapter)
            self._derived.move_to_end(name)
            while len(self._derived) > MAX_DERIVED_MODELS:
                self._derived.popitem(last=False)
        return name


@dataclass
class ImageRecord:
    """An image kept for later requests: the working copy (downscaled) on disk."""

    id: str
    path: str
    width: int
    height: int
    name: str
    original_width: int
    original_height: int
    created: float
    last_used: float

    def to_dict(self) -> dict:
        return {
            "id": self.id,
            "name": self.name,
            "width": self.width,
            "height": self.height,
            "original_width": self.original_width,
            "original_height": self.original_height,
            "url": f"/api/images/{self.id}.png",
        }


class ImageStore:
    """Uploaded images in a private temporary folder, bounded in count and age, removed at exit."""

    def __init__(self, *, max_items: int = 64, ttl_s: float = 3600.0, max_side: int = 1024) -> None:
        self.root = tempfile.mkdtemp(prefix="biasscope-uploads-")  # mkdtemp creates it with mode 0700
        os.chmod(self.root, 0o700)
        self.max_items = max_items
        self.ttl_s = ttl_s
        self.max_side = max_side
        self._items: OrderedDict[str, ImageRecord] = OrderedDict()
        self._lock = threading.Lock()
        self._finalizer = weakref.finalize(self, shutil.rmtree, self.root, True)

    def __len__(self) -> int:
        return len(self._items)

    def put(self, img: Image.Image, name: str) -> tuple[ImageRecord, Image.Image]:
        """Keep ``img`` downscaled so its longer side is at most ``max_side``; returns the record and
        the working copy (the image every later request on this id sees)."""
        ow, oh = img.size
        work = img
        if max(ow, oh) > self.max_side:
            work = img.copy()
            work.thumbnail((self.max_side, self.max_side), Image.Resampling.LANCZOS)
        image_id = secrets.token_hex(12)
        path = os.path.join(self.root, f"{image_id}.png")
        work.save(path, format="PNG", compress_level=1)
        now = time.time()
        rec = ImageRecord(image_id, path, work.width, work.height, name[:200], ow, oh, now, now)
        with self._lock:
            self._items[image_id] = rec
            self._purge_locked(now)
        return rec, work

    def record(self, image_id: str) -> ImageRecord:
        with self._lock:
            self._purge_locked(time.time())
            rec = self._items.get(str(image_id))
            if rec is None:
                raise NotFoundError(f"image {image_id!r} not found (it may have expired); upload it again")
            rec.last_used = time.time()
            self._items.move_to_end(rec.id)
            return rec

    def load(self, image_id: str) -> tuple[ImageRecord, Image.Image]:
        rec = self.record(image_id)
        try:
            with Image.open(rec.path) as im:
                return rec, im.convert("RGB")
        except FileNotFoundError:
            raise NotFoundError(f"image {image_id!r} expired; upload it again") from None

    def _purge_locked(self, now: float) -> None:
        expired = [k for k, r in self._items.items() if now - r.last_used > self.ttl_s]
        for k in expired:
            self._drop_locked(k)
        while len(self._items) > self.max_items:
            self._drop_locked(next(iter(self._items)))

    def _drop_locked(self, key: str) -> None:
        rec = self._items.pop(key)
        with contextlib.suppress(FileNotFoundError):
            os.remove(rec.path)

    def close(self) -> None:
        """Delete every stored image and the folder."""
        with self._lock:
            self._items.clear()
        self._finalizer()
