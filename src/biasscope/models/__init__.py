"""Models: torchvision zoo, user files (state dict, checkpoint, ONNX, TorchScript), one adapter."""

from .adapter import ModelAdapter, Prediction, resize_map
from .device import resolve_device, resolve_precision
from .files import load_labels, save_checkpoint
from .loader import load_model
from .weights import fetch_weights
from .zoo import (
    DEFAULT_MODEL,
    SUPPORTED_MODELS,
    ZooModelInfo,
    hub_checkpoint_dir,
    list_zoo_models,
    zoo_status,
)

__all__ = [
    "DEFAULT_MODEL",
    "SUPPORTED_MODELS",
    "ModelAdapter",
    "Prediction",
    "ZooModelInfo",
    "fetch_weights",
    "hub_checkpoint_dir",
    "list_zoo_models",
    "load_labels",
    "load_model",
    "resize_map",
    "resolve_device",
    "resolve_precision",
    "save_checkpoint",
    "zoo_status",
]
