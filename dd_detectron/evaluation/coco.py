"""COCO evaluation of every head of an R-CNN (boxes, masks, keypoints) that works with and
without detectron2's compiled ops."""

import importlib.machinery
import importlib.util

from detectron2.evaluation import COCOEvaluator

from ..data.datasets import ensure_dataset_ready
from ..modeling.heads import Heads

__all__ = ["build_coco_evaluator", "fast_coco_eval_available"]


def fast_coco_eval_available() -> bool:
    """True when ``detectron2._C`` is a compiled extension (it holds the fast COCO evaluator).

    A pure-Python detectron2 (see dev/setup_env.py) has a placeholder ``_C`` module instead;
    deciding from the module's file type keeps this independent of detectron2's version.
    """
    spec = importlib.util.find_spec("detectron2._C")
    return (
        spec is not None
        and spec.origin is not None
        and spec.origin.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))
    )


def build_coco_evaluator(cfg, dataset_name: str, output_dir: str = None) -> COCOEvaluator:
    """A COCOEvaluator of ``dataset_name`` for every head of the model (``Heads.iou_types``).

    Args:
        cfg: the run's config (MODEL.MASK_ON, MODEL.KEYPOINT_ON, TEST.KEYPOINT_OKS_SIGMAS).
        dataset_name: a registered dataset with COCO-style metadata.
        output_dir: where the evaluator writes its predictions; None for no file.

    Returns:
        a detectron2 COCOEvaluator using the compiled evaluator only where it exists.
    """
    # COCOEvaluator reads the dataset's JSON file and its category id map.
    ensure_dataset_ready(dataset_name)
    return COCOEvaluator(
        dataset_name,
        tasks=Heads.from_cfg(cfg).iou_types,
        distributed=True,
        output_dir=output_dir,
        use_fast_impl=fast_coco_eval_available(),
        kpt_oks_sigmas=cfg.TEST.KEYPOINT_OKS_SIGMAS,
    )
