"""The trainer of dd-detectron: detectron2's DefaultTrainer, changed only through its hooks."""
import os

from detectron2.engine import DefaultTrainer

from ..evaluation import build_keypoint_evaluator

__all__ = ["DDTrainer"]


class DDTrainer(DefaultTrainer):
    """DefaultTrainer with keypoint COCO evaluation (compiled evaluator only where it exists)."""

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        if output_folder is None:
            output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
        return build_keypoint_evaluator(cfg, dataset_name, output_folder)
