from .coco import build_coco_evaluator, coco_eval_tasks, fast_coco_eval_available

__all__ = ["build_coco_evaluator", "coco_eval_tasks", "fast_coco_eval_available"]
