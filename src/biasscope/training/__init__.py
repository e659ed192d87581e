"""Training and mitigation: fine-tune a backbone with group-aware sampling, compare models before/after.

Typical use::

    from biasscope.training import TrainConfig, train, compare_models
    skewed = train("train.csv", "runs/skewed", TrainConfig(group="gender", sampling="skew",
                                                           proportions={"male": 0.8, "female": 0.2}))
    fair = train("train.csv", "runs/fair", TrainConfig(group="gender", sampling="balanced-label-group"))
    compare_models("test.csv", [skewed.checkpoint, fair.checkpoint], "runs/compare", group="gender")
"""

from .augment import AUGMENT_MODES, augment_batch
from .backbone import build_backbone, head_name
from .compare import COMPARE_JSON, COMPARE_MD, compare_models, paired_bootstrap
from .config import EpochProgress, TrainConfig, TrainResult
from .curves import curve_series, write_curves
from .data import (
    SYNTHETIC_COLUMN,
    Example,
    examples_from_manifest,
    exclude_synthetic,
    is_synthetic,
    load_training_manifest,
    stratified_split,
)
from .generative import AUGMENTED_MANIFEST, ImageGenerator, add_synthetic_images, load_generator, parse_counts
from .sampling import (
    REWEIGHT_MODES,
    SAMPLING_STRATEGIES,
    balanced_weights,
    inverse_frequency_weights,
    parse_proportions,
    skew_subset,
    underrepresented_groups,
)
from .trainer import train

__all__ = [
    "AUGMENTED_MANIFEST",
    "AUGMENT_MODES",
    "COMPARE_JSON",
    "COMPARE_MD",
    "REWEIGHT_MODES",
    "SAMPLING_STRATEGIES",
    "SYNTHETIC_COLUMN",
    "EpochProgress",
    "Example",
    "ImageGenerator",
    "TrainConfig",
    "TrainResult",
    "add_synthetic_images",
    "augment_batch",
    "balanced_weights",
    "build_backbone",
    "compare_models",
    "curve_series",
    "examples_from_manifest",
    "exclude_synthetic",
    "head_name",
    "inverse_frequency_weights",
    "is_synthetic",
    "load_generator",
    "load_training_manifest",
    "paired_bootstrap",
    "parse_counts",
    "parse_proportions",
    "skew_subset",
    "stratified_split",
    "train",
    "underrepresented_groups",
    "write_curves",
]
