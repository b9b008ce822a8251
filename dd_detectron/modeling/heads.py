"""
The heads of an R-CNN (MODEL.MASK_ON, MODEL.KEYPOINT_ON) and what each needs.

Every R-CNN predicts boxes; a mask head adds masks (``segmentation`` in COCO files), a keypoint
head adds ``keypoints``. The ensembler, the annotation stage, the evaluator and the pipeline ask
this one object which heads there are, instead of testing config keys or model attributes
themselves.
"""

from dataclasses import dataclass
from typing import Tuple

__all__ = ["Heads"]


@dataclass(frozen=True)
class Heads:
    """The label-producing heads of an R-CNN.

    Attributes:
        mask: the model has a mask head (labels get a ``segmentation``).
        keypoint: the model has a keypoint head (labels get ``keypoints``).
        num_keypoints: K, 0 without a keypoint head.
    """

    mask: bool
    keypoint: bool
    num_keypoints: int = 0

    @classmethod
    def from_cfg(cls, cfg) -> "Heads":
        """Read MODEL.MASK_ON, MODEL.KEYPOINT_ON and MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS."""
        keypoint = bool(cfg.MODEL.KEYPOINT_ON)
        num_keypoints = int(cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS) if keypoint else 0
        return cls(bool(cfg.MODEL.MASK_ON), keypoint, num_keypoints)

    @classmethod
    def of_model(cls, model) -> "Heads":
        """The heads a built R-CNN has switched on (its ``roi_heads.mask_on`` / ``keypoint_on``)."""
        roi_heads = getattr(model, "roi_heads", None)
        keypoint = bool(getattr(roi_heads, "keypoint_on", False))
        num_keypoints = 0
        if keypoint:
            num_keypoints = int(getattr(roi_heads.keypoint_head, "num_keypoints", 0) or 0)
        return cls(bool(getattr(roi_heads, "mask_on", False)), keypoint, num_keypoints)

    @property
    def roi_head_names(self) -> Tuple[str, ...]:
        """The heads beyond boxes, as detectron2's ROI heads name their attributes
        (``mask_on``, ``mask_pooler``, ``keypoint_in_features``, ...): "mask", "keypoint"."""
        return (("mask",) if self.mask else ()) + (("keypoint",) if self.keypoint else ())

    @property
    def instance_kind(self) -> str:
        """What a labeled instance is, for calibration (see thresholds.py): "keypoints" with a
        keypoint head (also with a mask head: keypoint labels are the paper's case), else
        "masks" with a mask head, else "boxes"."""
        if self.keypoint:
            return "keypoints"
        return "masks" if self.mask else "boxes"

    @property
    def iou_types(self) -> Tuple[str, ...]:
        """The COCO evaluations the labels allow: bbox, and segm / keypoints with those heads."""
        return (
            ("bbox",) + (("segm",) if self.mask else ()) + (("keypoints",) if self.keypoint else ())
        )

    def describe(self) -> str:
        """'boxes, masks', 'boxes, keypoints', ...: for logs and the JSON's description."""
        parts = (
            ["boxes"] + (["masks"] if self.mask else []) + (["keypoints"] if self.keypoint else [])
        )
        return ", ".join(parts)

    def check_model(self, model) -> None:
        """Check that the model has exactly these heads.

        Args:
            model: a detectron2 GeneralizedRCNN (its ``roi_heads`` has mask_on / keypoint_on).

        Raises:
            ValueError: the model is not an R-CNN, or MODEL.MASK_ON / MODEL.KEYPOINT_ON asks
                for a head the model lacks (e.g. a mask model asked for keypoints) or leaves out
                one it has.
        """
        roi_heads = getattr(model, "roi_heads", None)
        if roi_heads is None:
            raise ValueError(
                f"The annotation stage labels with an R-CNN (GeneralizedRCNN with ROI heads); got "
                f"a {type(model).__name__} without roi_heads (MODEL.META_ARCHITECTURE)."
            )
        for key, head, wanted, has in (
            ("MODEL.MASK_ON", "mask", self.mask, bool(getattr(roi_heads, "mask_on", False))),
            (
                "MODEL.KEYPOINT_ON",
                "keypoint",
                self.keypoint,
                bool(getattr(roi_heads, "keypoint_on", False)),
            ),
        ):
            if wanted != has:
                raise ValueError(
                    f"{key} is {wanted}, but the model has {'a' if has else 'no'} {head} head: "
                    f"set {key} {has} to label with this model, or give a model with that head."
                )
