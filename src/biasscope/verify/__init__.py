"""Face verification bias audits (after Robinson et al. 2020, "Face Recognition: Too Bias, or Not Too Bias?").

A face *matcher* (an embedding model plus a cosine-similarity threshold) is audited per subgroup
and intersection (ethnicity x gender, ...): genuine and impostor score distributions, ROC/DET,
TAR at fixed FARs, FMR and FNMR at one global threshold with identity-bootstrap intervals,
per-subgroup thresholds that equalise FMR, gap tests (Holm-adjusted, with a minimum effect size),
and which face parts make two photos of one person similar, per subgroup.

Models: ``dlib-face`` (dlib's ResNet, offline from ``face-recognition-models``; the ``faces`` extra)
or the user's TorchScript/ONNX embedding model with its chip recipe. Data (BFW, RFW, your own) comes
from the user as a pairs or identity manifest (:func:`load_pairs`).
"""

from .explain import EXPLAIN_METHODS, PairExplanation, chip_part_masks, explain_pair, part_shares
from .metrics import (
    DEFAULT_FARS,
    VerifyOptions,
    compute_verify_metrics,
    fmr,
    fnmr,
    identity_bootstrap_rates,
    roc_points,
    scores_frame,
    tar_at_far,
    threshold_at_far,
)
from .models import (
    DLIB_FACE,
    DLIB_RECIPE,
    ChipRecipe,
    DlibFaceModel,
    EmbeddingModel,
    TorchEmbeddingModel,
    cosine_similarity,
    face_chip,
    load_embedding_model,
)
from .pairs import CROSS, PairSet, load_pairs, subgroup_key
from .report import verify_report_section, write_verify_report
from .runner import EXPLAIN_KINDS, VerifyResult, explain_subgroups, run_verify_audit, why_metrics
from .store import VerifyStore

__all__ = [
    "CROSS",
    "DEFAULT_FARS",
    "DLIB_FACE",
    "DLIB_RECIPE",
    "EXPLAIN_KINDS",
    "EXPLAIN_METHODS",
    "ChipRecipe",
    "DlibFaceModel",
    "EmbeddingModel",
    "PairExplanation",
    "PairSet",
    "TorchEmbeddingModel",
    "VerifyOptions",
    "VerifyResult",
    "VerifyStore",
    "chip_part_masks",
    "compute_verify_metrics",
    "cosine_similarity",
    "explain_pair",
    "explain_subgroups",
    "face_chip",
    "fmr",
    "fnmr",
    "identity_bootstrap_rates",
    "load_embedding_model",
    "load_pairs",
    "part_shares",
    "roc_points",
    "run_verify_audit",
    "scores_frame",
    "subgroup_key",
    "tar_at_far",
    "threshold_at_far",
    "verify_report_section",
    "why_metrics",
    "write_verify_report",
]
