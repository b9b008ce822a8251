"""The annotation stage of Data Distillation: hard COCO labels (boxes, and masks / keypoints as
the teacher's heads allow) for unlabeled images."""

from ..modeling.heads import Heads
from .coco_writer import ImageLabels, LabelSpace, write_coco_json
from .engine import (
    CALIBRATION_PNG,
    LABEL_QUALITY_JSON,
    MEMORY_ONLY_KEYS,
    OUTPUT_JSON,
    STATS_JSON,
    AnnotationSettings,
    annotate,
    views_config,
)
from .quality import label_quality
from .thresholds import LabeledStats, labeled_statistics, threshold_for_mean

__all__ = [
    "annotate",
    "AnnotationSettings",
    "views_config",
    "OUTPUT_JSON",
    "STATS_JSON",
    "CALIBRATION_PNG",
    "LABEL_QUALITY_JSON",
    "MEMORY_ONLY_KEYS",
    "label_quality",
    "ImageLabels",
    "LabelSpace",
    "write_coco_json",
    "Heads",
    "LabeledStats",
    "labeled_statistics",
    "threshold_for_mean",
]
