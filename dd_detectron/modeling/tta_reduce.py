"""
How the ensembler combines one head's outputs across views (test_time_augmentation.py): each
flipped view's logits brought back to the image, then a running mean or max over views, per box.
The flip is exact for RoIAlign with ``aligned=True``; see that module's docstring.
"""

from typing import Optional, Sequence

import torch
from detectron2.modeling.roi_heads.mask_head import mask_rcnn_inference
from detectron2.structures import Instances

__all__ = [
    "KEYPOINT_REDUCE_MODES",
    "MASK_REDUCE_MODES",
    "ViewReducer",
    "HeatmapReducer",
    "MaskReducer",
    "unflip_keypoint_logits",
    "unflip_mask_logits",
]

# Ways to combine per-view heatmap logits (DD.TTA.KEYPOINT_REDUCE).
KEYPOINT_REDUCE_MODES = ("mean", "max")
# Ways to combine per-view masks (DD.TTA.MASK_REDUCE), as Detectron's TEST.MASK_AUG.HEUR
# SOFT_AVG, SOFT_MAX, LOGIT_AVG.
MASK_REDUCE_MODES = ("mean_prob", "max_prob", "mean_logit")


def unflip_keypoint_logits(logits: torch.Tensor, flip_indices: Sequence[int]) -> torch.Tensor:
    """Bring heatmap logits predicted in a horizontally flipped view back to the image.

    Args:
        logits: (R, K, S, S) heatmap logits of R boxes in the flipped view.
        flip_indices: K indices; ``flip_indices[k]`` is the keypoint that ``k`` becomes under a
            flip (detectron2's ``create_keypoint_hflip_indices``), e.g. left_eye <-> right_eye.

    Returns:
        (R, K, S, S): width reversed (exact, see the docstring of test_time_augmentation.py),
        and channel ``k`` taken from the flipped view's channel ``flip_indices[k]``: what the
        flipped view calls the right eye is the image's left eye.
    """
    index = torch.as_tensor(flip_indices, dtype=torch.long, device=logits.device)
    return logits.flip(dims=[3]).index_select(1, index)


def unflip_mask_logits(logits: torch.Tensor) -> torch.Tensor:
    """Bring mask logits predicted in a horizontally flipped view back to the image.

    Args:
        logits: (R, C, M, M) mask logits of R boxes in the flipped view (C classes, or 1).

    Returns:
        (R, C, M, M) with the width reversed (exact, see the docstring of
        test_time_augmentation.py), as detectron2's ``GeneralizedRCNNWithTTA`` un-flips its masks.
    """
    return logits.flip(dims=[3])


class ViewReducer:
    """Combines per-view outputs of the same boxes by mean or max, one view at a time.

    Only the running result is kept (not every view's outputs), so memory does not grow with
    the number of views. A view may cover a subset of the boxes (size-dependent selection).
    """

    def __init__(self, num_boxes: int, mode: str = "mean"):
        """
        Args:
            num_boxes: R, the number of merged boxes.
            mode: "mean" or "max".
        """
        if mode not in ("mean", "max"):
            raise ValueError(f"ViewReducer: mode must be 'mean' or 'max', got {mode!r}")
        self.mode = mode
        self.num_boxes = num_boxes
        self._acc: Optional[torch.Tensor] = None
        self._count: Optional[torch.Tensor] = None

    def add(self, values: torch.Tensor, box_mask: Optional[torch.Tensor] = None) -> None:
        """Add one view.

        Args:
            values: (M, ...) outputs in the image's orientation, for the boxes selected by
                ``box_mask`` (M = its number of True entries), or for all R boxes.
            box_mask: (R,) bool, or None for all boxes.
        """
        if self._acc is None:
            shape = (self.num_boxes,) + tuple(values.shape[1:])
            # Max starts from -inf so that a box's first view is taken as it is.
            fill = 0.0 if self.mode == "mean" else float("-inf")
            self._acc = values.new_full(shape, fill)
            self._count = torch.zeros(self.num_boxes, dtype=values.dtype, device=values.device)
        if box_mask is None:
            box_mask = torch.ones(self.num_boxes, dtype=torch.bool, device=values.device)
        if self.mode == "mean":
            self._acc[box_mask] += values
        else:
            self._acc[box_mask] = torch.maximum(self._acc[box_mask], values)
        self._count[box_mask] += 1

    def result(self) -> torch.Tensor:
        """
        Returns:
            (R, ...): the combined outputs.

        Raises:
            ValueError: a box was covered by no view.
        """
        if self._acc is None or bool((self._count == 0).any()):
            raise ValueError(
                f"{type(self).__name__}: a box got no view; every box needs at least one."
            )
        if self.mode == "mean":
            return self._acc / self._count.view((-1,) + (1,) * (self._acc.dim() - 1))
        return self._acc


class HeatmapReducer(ViewReducer):
    """Combines per-view keypoint heatmap logits (R, K, S, S) of the same boxes."""

    def __init__(self, num_boxes: int, mode: str = "mean"):
        """
        Args:
            num_boxes: R, the number of merged boxes.
            mode: "mean" (Detectron's HM_AVG: average of the raw logits) or "max" (HM_MAX).
        """
        if mode not in KEYPOINT_REDUCE_MODES:
            raise ValueError(
                f"DD.TTA.KEYPOINT_REDUCE must be one of {KEYPOINT_REDUCE_MODES}, got {mode!r}"
            )
        super().__init__(num_boxes, mode)


class MaskReducer:
    """Combines per-view mask logits of the same boxes into one soft mask per box, as
    Detectron's mask test-time augmentation (``im_detect_mask_aug``).

    "mean_prob" and "max_prob" take each view's probabilities of the box's class (detectron2's
    ``mask_rcnn_inference``) and average them (SOFT_AVG) or take their max (SOFT_MAX);
    "mean_logit" averages the raw logits and applies ``mask_rcnn_inference`` once (LOGIT_AVG;
    Detectron recovered the logits from probabilities, here they are the head's own).
    """

    def __init__(self, pred_classes: torch.Tensor, mode: str = "mean_prob"):
        """
        Args:
            pred_classes: (R,) the merged boxes' classes: the mask channel read for each.
            mode: one of ``MASK_REDUCE_MODES``.
        """
        if mode not in MASK_REDUCE_MODES:
            raise ValueError(f"DD.TTA.MASK_REDUCE must be one of {MASK_REDUCE_MODES}, got {mode!r}")
        self.mode = mode
        self.pred_classes = pred_classes
        self._reducer = ViewReducer(len(pred_classes), "max" if mode == "max_prob" else "mean")

    def _probabilities(self, logits: torch.Tensor, classes: torch.Tensor) -> torch.Tensor:
        boxes = Instances((1, 1), pred_classes=classes)  # mask_rcnn_inference reads the classes
        mask_rcnn_inference(logits, [boxes])
        return boxes.pred_masks

    def add(self, logits: torch.Tensor, box_mask: Optional[torch.Tensor] = None) -> None:
        """Add one view.

        Args:
            logits: (M, C, S, S) the mask head's logits in the image's orientation, for the
                boxes selected by ``box_mask`` (M = its number of True entries), or for all.
            box_mask: (R,) bool, or None for all boxes.
        """
        if self.mode != "mean_logit":
            classes = self.pred_classes if box_mask is None else self.pred_classes[box_mask]
            logits = self._probabilities(logits, classes)
        self._reducer.add(logits, box_mask)

    def result(self) -> torch.Tensor:
        """
        Returns:
            (R, 1, S, S): the combined foreground probability of each box's class.

        Raises:
            ValueError: a box was covered by no view.
        """
        combined = self._reducer.result()
        if self.mode == "mean_logit":
            return self._probabilities(combined, self.pred_classes)
        return combined
