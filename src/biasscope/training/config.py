"""What defines a training run (:class:`TrainConfig`, saved with the checkpoint), what it reports
while it runs (:class:`EpochProgress`) and what it produced (:class:`TrainResult`)."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

from ..errors import BiasscopeError
from ..models.adapter import ModelAdapter
from .augment import AUGMENT_MODES
from .sampling import REWEIGHT_MODES, SAMPLING_STRATEGIES

__all__ = ["MSG_NO_PROPORTIONS", "EpochProgress", "TrainConfig", "TrainResult"]

MSG_NO_PROPORTIONS = "sampling 'skew' needs proportions, e.g. --proportions a=0.8,b=0.2"


@dataclass
class TrainConfig:
    """Everything that defines a training run (saved with the checkpoint)."""

    backbone: str = "resnet18"
    pretrained: bool = False
    freeze_backbone: bool = False
    target: str = "label"
    group: str = "group"
    input_size: int = 64
    epochs: int = 10
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 0.0
    optimizer: Literal["adam", "sgd"] = "adam"
    val_fraction: float = 0.2
    seed: int = 0
    device: str = "cpu"
    sampling: str = "as-is"
    proportions: dict[str, float] | None = None
    reweight: str = "none"
    augment: str = "none"
    #: groups that get the strong augmentation: names, ``["auto"]`` (groups below the uniform share
    #: of the training sample) or empty
    strong_augment: list[str] = field(default_factory=list)
    #: stop after this many epochs without a lower validation loss (None: never stop early)
    patience: int | None = 3
    min_delta: float = 0.0
    download: bool = False

    def validate(self) -> None:
        if self.sampling not in SAMPLING_STRATEGIES:
            raise BiasscopeError(f"unknown sampling {self.sampling!r}; choose from {', '.join(SAMPLING_STRATEGIES)}")
        if self.reweight not in REWEIGHT_MODES:
            raise BiasscopeError(f"unknown reweighting {self.reweight!r}; choose from {', '.join(REWEIGHT_MODES)}")
        if self.augment not in AUGMENT_MODES:
            raise BiasscopeError(f"unknown augmentation {self.augment!r}; choose from {', '.join(AUGMENT_MODES)}")
        if self.optimizer not in ("adam", "sgd"):
            raise BiasscopeError(f"unknown optimizer {self.optimizer!r}; use adam or sgd")
        if self.sampling == "skew" and not self.proportions:
            raise BiasscopeError(MSG_NO_PROPORTIONS)
        if self.epochs < 1 or self.batch_size < 1 or self.input_size < 16:
            raise BiasscopeError("epochs and batch_size must be at least 1 and input_size at least 16")
        if not (self.lr > 0 and math.isfinite(self.lr)):
            raise BiasscopeError(f"learning rate must be positive, got {self.lr}")
        if self.patience is not None and self.patience < 1:
            raise BiasscopeError("patience must be at least 1 (or None to train every epoch)")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class EpochProgress:
    """Reported after each batch (``stage='batch'``) and each epoch (``stage='epoch'``)."""

    epoch: int
    epochs: int
    step: int
    steps: int
    loss: float
    stage: str
    record: dict | None = None


@dataclass
class TrainResult:
    """What a run produced."""

    out_dir: Path
    checkpoint: Path
    class_names: list[str]
    groups: list[str]
    history: list[dict]
    best_epoch: int
    stopped_early: bool
    n_train: int
    n_val: int
    strong_groups: list[str]
    feature_cache: bool

    def load(self, device: str = "cpu") -> ModelAdapter:
        """The trained model as a :class:`~biasscope.ModelAdapter` (through ``load_model``)."""
        from ..models import load_model

        return load_model(self.checkpoint, device=device)

    def to_dict(self) -> dict:
        d = {k: v for k, v in self.__dict__.items() if k != "history"}
        d["out_dir"], d["checkpoint"] = str(self.out_dir), str(self.checkpoint)
        return d
