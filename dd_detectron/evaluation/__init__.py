from .coco import build_keypoint_evaluator, fast_coco_eval_available

__all__ = ["build_keypoint_evaluator", "fast_coco_eval_available"]
