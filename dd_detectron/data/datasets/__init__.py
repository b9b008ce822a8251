# Importing builtin registers every builtin dataset (the synthetic_kp_* splits, the unlabeled COCO
# splits detectron2 lacks, sports1m_frames and the dd_*_generated labels) under
# $DETECTRON2_DATASETS, from the family tables; see builtin.py. Dataset names that are paths are
# registered by register_path_datasets(cfg), which the tools' setup calls.
from . import builtin  # noqa: F401
from .builtin import datasets_root, register_all_builtin
from .catalog import FOLDER_PREFIX, ensure_dataset_ready, register_path_datasets
from .coco import PAPER_SPLITS, register_coco_unlabeled
from .generated import BUILTIN_GENERATED, register_builtin_generated, register_generated_keypoints
from .generated_instances import register_generated_instances
from .image_folder import (
    BUILTIN_IMAGE_FOLDERS,
    register_builtin_image_folders,
    register_image_folder,
)
from .synthetic import register_synthetic_keypoints

__all__ = [
    "datasets_root",
    "register_all_builtin",
    "register_path_datasets",
    "ensure_dataset_ready",
    "FOLDER_PREFIX",
    "PAPER_SPLITS",
    "register_coco_unlabeled",
    "BUILTIN_GENERATED",
    "register_generated_keypoints",
    "register_generated_instances",
    "register_builtin_generated",
    "BUILTIN_IMAGE_FOLDERS",
    "register_image_folder",
    "register_builtin_image_folders",
    "register_synthetic_keypoints",
]
