"""
The teacher as the annotation stage runs it: the model behind the views of ``views_config``.

- Keypoint models, and any model with several views (TEST.AUG.ENABLED): the multi-view
  ensembler (``build_rcnn_tta``: ``RCNNWithTTA`` for every head), which owns the combination of
  views. With one view it is plain
  inference (tests/test_tta.py), so keypoint labels do not depend on the path taken.
- Models without a keypoint head, single view (TEST.AUG.ENABLED False): ``SingleViewRCNN``,
  detectron2's own inference on the one view (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST, no flip),
  whose outputs are detector_postprocess'ed to the image's size (hard ``pred_masks`` of the
  image's resolution for mask models).
"""

from typing import List

from detectron2.modeling import DatasetMapperTTA
from torch import nn

from ..modeling.heads import Heads
from ..modeling.test_time_augmentation import build_rcnn_tta

__all__ = ["SingleViewRCNN", "build_teacher"]


class SingleViewRCNN(nn.Module):
    """detectron2's inference of an R-CNN on the single view of ``views_config(cfg)``.

    Takes the annotation loader's inputs (inputs.py): an image at its own size (the view is made
    here, by the same mapper the ensembler uses) or its precomputed views (exactly one).
    """

    def __init__(self, cfg, model: nn.Module):
        """
        Args:
            cfg: the config whose TEST.AUG holds one view without flip (``views_config``).
            model: a GeneralizedRCNN.

        Raises:
            ValueError: TEST.AUG holds other than one unflipped view.
        """
        super().__init__()
        if len(cfg.TEST.AUG.MIN_SIZES) != 1 or cfg.TEST.AUG.FLIP:
            raise ValueError(
                "SingleViewRCNN runs one view: TEST.AUG.MIN_SIZES must hold one size and "
                f"TEST.AUG.FLIP be False (got {tuple(cfg.TEST.AUG.MIN_SIZES)}, "
                f"{cfg.TEST.AUG.FLIP})."
            )
        self.model = model
        self.tta_mapper = DatasetMapperTTA(cfg)

    def _view(self, x: dict) -> dict:
        if "views" in x:
            if len(x["views"]) != 1:
                raise ValueError(f"SingleViewRCNN got {len(x['views'])} views of an image, not 1.")
            return x["views"][0]
        (view,) = self.tta_mapper({"image": x["image"], "height": x["height"], "width": x["width"]})
        return view

    def forward(self, batched_inputs: List[dict]) -> List[dict]:
        """Same input/output format as ``GeneralizedRCNN.forward`` at inference."""
        views = [
            {k: v[k] for k in ("image", "height", "width")} for v in map(self._view, batched_inputs)
        ]
        return self.model(views)


def build_teacher(cfg, model: nn.Module, heads: Heads) -> nn.Module:
    """The module the annotation stage runs (see the module docstring).

    Args:
        cfg: ``views_config(cfg)``.
        model: the teacher, a GeneralizedRCNN with its weights loaded.
        heads: its heads (checked against the model here).

    Raises:
        ValueError: heads and model disagree, or the ensembler refuses the model or views.
    """
    heads.check_model(model)
    if heads.keypoint or cfg.TEST.AUG.ENABLED:
        return build_rcnn_tta(cfg, model)  # checks the model and the views first
    return SingleViewRCNN(cfg, model)
