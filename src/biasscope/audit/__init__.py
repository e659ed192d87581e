"""Audits: a labelled image set through one or more models; group metrics, regions, report.

Typical use::

    from biasscope.audit import load_manifest, run_audit, AuditConfig
    m = load_manifest("doctors.csv", groups=["gender"])
    cfg = AuditConfig(groups=["gender"], methods=["gradcam"],
                      concepts={"doctor": ["stethoscope", "lab coat"], "nurse": ["nurse"]})
    run_audit(m, ["mobilenet_v2"], "runs/doctors", cfg)   # metrics.json, per_image.csv, report.html
"""

from .concepts import NONE_LABEL, LabelSpace, load_concepts, parse_concept
from .manifest import Manifest, ManifestRow, load_manifest, manifest_from_folder, write_manifest
from .metric_values import BiasScore, Gap, GroupStats
from .metrics import MetricsOptions, bias_score, compute_model_metrics, gap_test, holm_adjust
from .model_metrics import CellMetric, GroupingMetrics, ModelMetrics
from .results import (
    METRICS_JSON,
    PER_IMAGE_CSV,
    REPORT_HTML,
    finalize_run,
    findings,
    image_detail,
    list_runs,
    load_heatmap,
    load_metrics,
    per_image_frame,
    per_image_table,
    run_info,
)
from .runner import AuditConfig, AuditProgress, ModelSource, RunResult, run_audit
from .store import RunStore

__all__ = [
    "METRICS_JSON",
    "NONE_LABEL",
    "PER_IMAGE_CSV",
    "REPORT_HTML",
    "AuditConfig",
    "AuditProgress",
    "BiasScore",
    "CellMetric",
    "Gap",
    "GroupStats",
    "GroupingMetrics",
    "LabelSpace",
    "Manifest",
    "ManifestRow",
    "MetricsOptions",
    "ModelMetrics",
    "ModelSource",
    "RunResult",
    "RunStore",
    "bias_score",
    "compute_model_metrics",
    "finalize_run",
    "findings",
    "gap_test",
    "holm_adjust",
    "image_detail",
    "list_runs",
    "load_concepts",
    "load_heatmap",
    "load_manifest",
    "load_metrics",
    "manifest_from_folder",
    "parse_concept",
    "per_image_frame",
    "per_image_table",
    "run_audit",
    "run_info",
    "write_manifest",
]
