"""The annotation stage of Data Distillation: hard COCO keypoint labels for unlabeled images."""
from .coco_writer import ImageLabels, LabelSpace, write_coco_keypoints_json
from .distributed import init_distributed_from_env, launched_by_torchrun, shutdown_distributed
from .engine import CALIBRATION_PNG, OUTPUT_JSON, STATS_JSON, AnnotationSettings, annotate, views_config
from .quality import label_quality
from .thresholds import LabeledStats, labeled_statistics, threshold_for_mean

__all__ = [
    "annotate",
    "AnnotationSettings",
    "views_config",
    "OUTPUT_JSON",
    "STATS_JSON",
    "CALIBRATION_PNG",
    "label_quality",
    "ImageLabels",
    "LabelSpace",
    "write_coco_keypoints_json",
    "LabeledStats",
    "labeled_statistics",
    "threshold_for_mean",
    "init_distributed_from_env",
    "launched_by_torchrun",
    "shutdown_distributed",
]
