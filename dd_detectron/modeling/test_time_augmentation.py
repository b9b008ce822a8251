"""
Multi-transform inference for R-CNN models: the ensembler of Data Distillation, for box-only
(Faster R-CNN), mask, keypoint and mask + keypoint models.

The views come from ``TEST.AUG`` (shorter side ``MIN_SIZES``, ``MAX_SIZE``, ``FLIP``). Boxes are
the union of every view's detections mapped back to the image, reduced by per-class NMS and
optional box voting. Masks and keypoints are predicted for the merged boxes only: each head's raw
logits in every view (on the same box mapped into that view, from the view's one backbone pass),
un-flipped, combined across views, then turned into the image's labels once: keypoints by
detectron2's own decoding, masks by ``mask_rcnn_inference`` and ``paste_masks_in_image``.

Flip convention, shared with detectron2's ``HFlipTransform``: in continuous coordinates (pixel
``i`` covers ``[i, i + 1)``) a flip of width ``W`` maps ``x -> W - x``, so a box ``[x0, x1]``
becomes ``[W - x1, W - x0]``. RoIAlign with ``aligned=True`` (detectron2's "ROIAlignV2", the
default mask and keypoint pooler) samples bin ``j`` of ``P`` at ``x0 + (j + 1/2) * w / P``; for
the flipped box that is ``W - (x0 + (P - 1 - j + 1/2) * w / P)``: the mirror of bin
``P - 1 - j``. The flipped view's output column ``c`` (heatmap or mask) therefore lies over the
image point of column ``S - 1 - c``: reversing the width is exact, with no half-pixel shift.
Keypoint channels are also swapped left <-> right; mask channels are classes and stay. (The
legacy ``aligned=False`` pooler shifts the grid by half a feature pixel and breaks this symmetry.)
"""

import logging
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable, Dict, List

import torch
from detectron2.data.detection_utils import create_keypoint_hflip_indices
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.layers import paste_masks_in_image
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.structures import Boxes, Instances, heatmaps_to_keypoints, pairwise_iou
from fvcore.transforms import HFlipTransform

from .heads import Heads
from .tta_reduce import (
    HeatmapReducer,
    MaskReducer,
    ViewReducer,
    unflip_keypoint_logits,
    unflip_mask_logits,
)

# The view reducers (tta_reduce.py) are importable from here too, beside the ensemblers.
__all__ = [
    "RCNNWithTTA",
    "build_rcnn_tta",
    "ViewReducer",
    "HeatmapReducer",
    "MaskReducer",
    "unflip_keypoint_logits",
    "unflip_mask_logits",
    "box_voting",
    "keypoint_flip_indices_from_cfg",
    "bounded_heatmaps_to_keypoints",
]

logger = logging.getLogger(__name__)

# Soft masks become hard masks at this probability, as plain inference (detector_postprocess).
MASK_THRESHOLD = 0.5


def box_voting(
    kept_boxes: torch.Tensor,
    kept_classes: torch.Tensor,
    boxes: torch.Tensor,
    scores: torch.Tensor,
    classes: torch.Tensor,
    iou_threshold: float,
) -> torch.Tensor:
    """Detectron's box voting (TEST.BBOX_VOTE, scoring "ID"): refine boxes kept by NMS.

    Args:
        kept_boxes: (N, 4) XYXY boxes kept by NMS.
        kept_classes: (N,) their classes.
        boxes, scores, classes: (M, 4), (M,), (M,) the pool of boxes that vote (the union).
        iou_threshold: a pool box votes for a kept box of its class when their IoU >= this.

    Returns:
        (N, 4): each kept box replaced by the score-weighted mean of its voters (a kept box is
        in the pool, so it always votes for itself). Scores are left unchanged.
    """
    if len(kept_boxes) == 0 or len(boxes) == 0:
        return kept_boxes
    iou = pairwise_iou(Boxes(kept_boxes), Boxes(boxes))  # (N, M)
    votes = (iou >= iou_threshold) & (kept_classes[:, None] == classes[None, :])
    weights = votes.to(scores.dtype) * scores[None, :]
    total = weights.sum(dim=1, keepdim=True)
    voted = weights @ boxes / total.clamp(min=torch.finfo(scores.dtype).tiny)
    # A kept box whose voters all have zero score keeps its own coordinates.
    return torch.where(total > 0, voted, kept_boxes)


def keypoint_flip_indices_from_cfg(cfg) -> List[int]:
    """The keypoint flip indices of the model's keypoint set.

    Args:
        cfg: reads DATASETS.TRAIN (the keypoints the model was trained on) and, when those carry
            no keypoint metadata, DATASETS.TEST.

    Returns:
        K indices, as detectron2's ``create_keypoint_hflip_indices``.

    Raises:
        ValueError: no dataset of DATASETS.TRAIN / DATASETS.TEST has keypoint_names and
            keypoint_flip_map in its metadata.
    """
    errors = []
    for key, names in (
        ("DATASETS.TRAIN", cfg.DATASETS.TRAIN),
        ("DATASETS.TEST", cfg.DATASETS.TEST),
    ):
        if not names:
            continue
        try:
            return create_keypoint_hflip_indices(list(names))
        except (AttributeError, KeyError, ValueError, AssertionError) as e:
            errors.append(f"{key}={tuple(names)}: {type(e).__name__}: {e}")
    raise ValueError(
        "TEST.AUG.FLIP needs the keypoint flip map (left/right pairs) of the model's keypoints, "
        "read from the metadata (keypoint_names, keypoint_flip_map) of DATASETS.TRAIN or "
        "DATASETS.TEST; none has it (" + "; ".join(errors or ["both are empty"]) + "). Register "
        "the dataset's metadata or pass keypoint_flip_indices."
    )


def bounded_heatmaps_to_keypoints(
    maps: torch.Tensor, rois: torch.Tensor, max_size: int
) -> torch.Tensor:
    """detectron2's ``heatmaps_to_keypoints`` with each box's decoding frame at most
    ``max_size`` pixels a side.

    detectron2 resizes every box's K heatmaps to the box's size in pixels (bicubic) and takes
    the peaks there: a 4000-pixel box of a 48 MP photo needs 17 maps of 16M pixels, several
    times over (the softmax's temporaries), i.e. several GB. A box whose longer side exceeds
    ``max_size`` is decoded against the same box shrunk (about its top-left corner, each side
    to at most ``max_size``), and the peaks' x, y are scaled back: they land within about one
    pixel of that frame (side / max_size image pixels) of the full-size peaks, and the scores
    (the interpolated logit and the softmax at the peak) are read from the same heatmap.
    Smaller boxes are decoded exactly as detectron2 does (bit-identical).

    Args:
        maps: (R, K, S, S) heatmap logits.
        rois: (R, 4) XYXY boxes in the image.
        max_size: the bound, in pixels; 0 = none (detectron2's decoding for every box).

    Returns:
        (R, K, 4): x, y, logit, score, as ``heatmaps_to_keypoints``.
    """
    maps, rois = maps.detach(), rois.detach()
    if max_size <= 0 or len(rois) == 0:
        return heatmaps_to_keypoints(maps, rois)
    # The same widths and heights as detectron2's decoding (a box is at least 1 pixel).
    widths = (rois[:, 2] - rois[:, 0]).clamp(min=1)
    heights = (rois[:, 3] - rois[:, 1]).clamp(min=1)
    large = torch.maximum(widths, heights) > max_size
    if not bool(large.any()):
        return heatmaps_to_keypoints(maps, rois)
    out = maps.new_zeros(len(rois), maps.shape[1], 4)
    small = ~large
    if bool(small.any()):
        # detectron2 decodes box by box: a subset decodes exactly as it does in the whole.
        out[small] = heatmaps_to_keypoints(maps[small], rois[small])
    # Each side shrunk to at most max_size (a narrow box keeps its full width).
    frame_w = widths[large].clamp(max=max_size)
    frame_h = heights[large].clamp(max=max_size)
    zeros = torch.zeros_like(frame_w)
    frames = torch.stack([zeros, zeros, frame_w, frame_h], dim=1)
    decoded = heatmaps_to_keypoints(maps[large], frames)
    x0, y0 = rois[large, 0][:, None], rois[large, 1][:, None]
    decoded[:, :, 0] = decoded[:, :, 0] * (widths[large] / frame_w)[:, None] + x0
    decoded[:, :, 1] = decoded[:, :, 1] * (heights[large] / frame_h)[:, None] + y0
    out[large] = decoded
    return out


def _decode_keypoints(logits: torch.Tensor, instances: Instances, max_size: int) -> None:
    """detectron2's ``keypoint_rcnn_inference`` for one image, decoding in a bounded frame
    (``bounded_heatmaps_to_keypoints``): sets pred_keypoints (x, y, score) and
    pred_keypoint_heatmaps (the logits)."""
    logits = logits.detach()
    decoded = bounded_heatmaps_to_keypoints(logits, instances.pred_boxes.tensor, max_size)
    instances.pred_keypoints = decoded[:, :, [0, 1, 3]]
    instances.pred_keypoint_heatmaps = logits


def _is_flipped(tfm) -> bool:
    # Same test as detectron2's transform_keypoint_annotations: an odd number of h-flips.
    return sum(isinstance(t, HFlipTransform) for t in tfm.transforms) % 2 == 1


@dataclass
class _HeadPass:
    """What one pooled head (masks or keypoints) needs for the merged boxes in every view."""

    pooler: torch.nn.Module
    in_features: List[str]
    layers: Callable[[torch.Tensor], torch.Tensor]  # pooled features -> logits
    unflip: Callable[[torch.Tensor], torch.Tensor]  # flipped view's logits -> the image's
    reducer: object  # HeatmapReducer or MaskReducer: add(logits, box_mask), result()


class RCNNWithTTA(GeneralizedRCNNWithTTA):
    """GeneralizedRCNNWithTTA for every R-CNN head (boxes, masks, keypoints, masks + keypoints):
    multi-transform inference, one backbone pass per view for all heads.

    Why this class owns these cases: detectron2's ``GeneralizedRCNNWithTTA`` refuses models with
    ``MODEL.KEYPOINT_ON`` ("TTA for keypoint is not supported yet"), and for masks it runs the
    whole model on every view twice: once for boxes, once more, backbone included, on the merged
    boxes. Keypoints also cannot reuse its mask reduction: a flipped heatmap must swap its
    left/right channels, and the result is decoded to points, not pasted.

    What it does, per image:

    1. views from ``tta_mapper`` (default ``DatasetMapperTTA``: ``TEST.AUG``); views of one
       image size (a view and its flip) run as one batch (``DD.TTA.VIEW_BATCH_SIZE``; by default
       on GPU only);
    2. per batch: one backbone pass, RPN and box head; the features the mask and keypoint heads
       read are kept (``DD.TTA.CACHE_FEATURES``) or dropped and recomputed in step 4 (memory
       bounded by one batch of views, for very large images);
    3. boxes: the union of all views' boxes mapped back to the image, per-class NMS
       (``MODEL.ROI_HEADS.NMS_THRESH_TEST``, ``TEST.DETECTIONS_PER_IMAGE``), optional box voting
       (``DD.TTA.BOX_VOTING``, ``BOX_VOTING_IOU``);
    4. masks and keypoints (those of ``MODEL.MASK_ON``, ``MODEL.KEYPOINT_ON``): for the merged
       boxes, each head's logits in every view on the box mapped into that view; flipped views
       un-flipped (keypoints also with the keypoint flip map); combined one view at a time
       (``DD.TTA.MASK_REDUCE``, ``DD.TTA.KEYPOINT_REDUCE``; optionally size-dependent:
       ``DD.TTA.SCALE_SIZE_DEP``, ``AREA_TH``), each view's features freed when it is done;
    5. masks: the combined soft masks pasted at the image's resolution and thresholded at 0.5,
       as plain inference's ``detector_postprocess``; keypoints: decoded as detectron2's
       ``keypoint_rcnn_inference`` on the merged boxes, in image coordinates, boxes larger than
       ``DD.TTA.KEYPOINT_DECODE_MAX_SIZE`` in a bounded frame (``bounded_heatmaps_to_keypoints``),
       so a huge photo does not need GBs per box.

    With the same views, no box voting, "mean_prob" and one view per batch, boxes, scores,
    classes and masks are those of detectron2's ``GeneralizedRCNNWithTTA`` (batch size 1).

    Views made elsewhere (in the DataLoader's workers, ``annotation/inputs.py``) are used as
    they come: an input with "views" and "transforms" (lists, as ``tta_mapper`` makes them)
    needs no "image", and ``tta_mapper`` is not called for it.

    Output: ``{"instances": Instances}`` with pred_boxes, scores, pred_classes; pred_masks
    (R, H, W) bool with MODEL.MASK_ON; pred_keypoints and pred_keypoint_heatmaps (the combined
    logits) with MODEL.KEYPOINT_ON; in the input's ``height`` x ``width``.
    """

    def __init__(self, cfg, model, tta_mapper=None, batch_size=None, *, keypoint_flip_indices=None):
        """
        Args:
            cfg: a config with dd-detectron's keys (TEST.AUG.*, DD.TTA.*); MODEL.MASK_ON and
                MODEL.KEYPOINT_ON say which heads to run besides the box head.
            model: a GeneralizedRCNN with those heads, pooled (e.g. MaskRCNNConvUpsampleHead,
                KRCNNConvDeconvUpsampleHead).
            tta_mapper: takes a dataset dict with "image" and returns the views, each with
                "transforms"; default ``DatasetMapperTTA(cfg)``.
            batch_size: at most this many views of the same image size run as one batch;
                None: DD.TTA.VIEW_BATCH_SIZE (0 there: 2 on GPU, 1 on CPU).
            keypoint_flip_indices: K flip indices; default from the metadata of DATASETS.TRAIN
                (or TEST), needed only for keypoints when a view is flipped.
        """
        if tta_mapper is None and len(cfg.TEST.AUG.MIN_SIZES) == 0:
            raise ValueError("TEST.AUG.MIN_SIZES is empty: test-time augmentation has no views.")
        # Divergence: the base class asserts MODEL.KEYPOINT_ON is False; it is given a copy of the
        # config with the keypoint head off, and the real config is kept in self.cfg.
        base_cfg = cfg.clone()
        base_cfg.defrost()
        base_cfg.MODEL.KEYPOINT_ON = False
        if batch_size is None:
            batch_size = cfg.DD.TTA.VIEW_BATCH_SIZE
        if batch_size < 0:
            raise ValueError(
                f"DD.TTA.VIEW_BATCH_SIZE must be >= 0 (0: automatic), got {batch_size}"
            )
        if batch_size == 0:
            # Divergence: the base class batches 3 views of any sizes; here a view is batched
            # with its flip where that pays (GPU), and runs alone on CPU.
            on_gpu = next(iter(model.parameters())).device.type == "cuda"
            batch_size = 2 if on_gpu else 1
        super().__init__(base_cfg, model, tta_mapper=tta_mapper, batch_size=batch_size)
        self.cfg = cfg.clone()
        self.mask_on = bool(cfg.MODEL.MASK_ON)
        self.keypoint_on = bool(cfg.MODEL.KEYPOINT_ON)
        for head, key, pooler_key in (
            ("mask", "MODEL.MASK_ON", "MODEL.ROI_MASK_HEAD.POOLER_TYPE"),
            ("keypoint", "MODEL.KEYPOINT_ON", "MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE"),
        ):
            if getattr(self, f"{head}_on"):
                self._check_head(head, key, pooler_key)

        tta = cfg.DD.TTA
        # The reducers check their modes now, not at the first image.
        MaskReducer(torch.zeros(0, dtype=torch.long), tta.MASK_REDUCE)
        HeatmapReducer(0, tta.KEYPOINT_REDUCE)
        if not 0.0 < tta.BOX_VOTING_IOU <= 1.0:
            raise ValueError(f"DD.TTA.BOX_VOTING_IOU must be in (0, 1], got {tta.BOX_VOTING_IOU}")
        self.mask_reduce = tta.MASK_REDUCE
        self.keypoint_reduce = tta.KEYPOINT_REDUCE
        self.box_voting = bool(tta.BOX_VOTING)
        self.box_voting_iou = float(tta.BOX_VOTING_IOU)
        self.scale_size_dep = bool(tta.SCALE_SIZE_DEP)
        self.area_th = float(tta.AREA_TH)
        self.cache_features = bool(tta.CACHE_FEATURES)
        if tta.KEYPOINT_DECODE_MAX_SIZE < 0:
            raise ValueError(
                "DD.TTA.KEYPOINT_DECODE_MAX_SIZE must be >= 0 (0: no bound), got "
                f"{tta.KEYPOINT_DECODE_MAX_SIZE}"
            )
        self.keypoint_decode_max_size = int(tta.KEYPOINT_DECODE_MAX_SIZE)
        if self.keypoint_on and keypoint_flip_indices is None and cfg.TEST.AUG.FLIP:
            keypoint_flip_indices = keypoint_flip_indices_from_cfg(cfg)
        num_keypoints = cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS
        if keypoint_flip_indices is not None and len(keypoint_flip_indices) != num_keypoints:
            raise ValueError(
                f"The keypoint flip map has {len(keypoint_flip_indices)} keypoints, the model "
                f"MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = {num_keypoints}."
            )
        self.keypoint_flip_indices = (
            None if keypoint_flip_indices is None else list(keypoint_flip_indices)
        )

    def _check_head(self, head: str, key: str, pooler_key: str) -> None:
        """The model has the pooled head that the config's ``key`` asks for."""
        roi_heads = self.model.roi_heads
        if not getattr(roi_heads, f"{head}_on", False):
            raise ValueError(
                f"{type(self).__name__}: {key} is True, but the model's ROI heads "
                f"({type(roi_heads).__name__}) have no {head} head ({key} / "
                "MODEL.ROI_HEADS.NAME)."
            )
        if getattr(roi_heads, f"{head}_pooler", None) is None:
            raise ValueError(
                f"{type(self).__name__} needs a pooled {head} head: {pooler_key} must not be "
                "empty."
            )

    # ------------------------------------------------------------------------------------------
    # Divergence: the base class's _inference_one_image runs the model twice per view when a
    # second head is on and has no keypoint branch; this one is the whole pipeline above, and
    # runs without autograd (the base class leaves that to its caller).
    # ------------------------------------------------------------------------------------------
    @torch.no_grad()
    def _inference_one_image(self, input):
        """
        Args:
            input (dict): one dataset dict with "image" (CHW tensor), "height", "width".

        Returns:
            dict: {"instances": Instances} in the input's height x width.
        """
        orig_shape = (input["height"], input["width"])
        augmented_inputs, tfms = self._get_augmented_inputs(input)
        if len(augmented_inputs) == 0:
            raise ValueError("Test-time augmentation produced no views: check TEST.AUG.MIN_SIZES.")
        batches = self._view_batches(augmented_inputs)

        head_features = self._head_in_features()
        cached: Dict[int, Dict[str, torch.Tensor]] = {}
        all_boxes, all_scores, all_classes = [], [], []
        for b, view_ids in enumerate(batches):
            instances, features = self._detect_boxes([augmented_inputs[i] for i in view_ids])
            if self.cache_features and head_features:
                cached[b] = {f: features[f] for f in head_features}
            del features  # p6 and the other levels the mask and keypoint heads do not read
            for i, inst in zip(view_ids, instances):
                boxes = inst.pred_boxes.tensor
                # Like the base class: map each view's boxes back to the image.
                boxes_orig = tfms[i].inverse().apply_box(boxes.cpu().numpy())
                all_boxes.append(
                    torch.as_tensor(boxes_orig, dtype=boxes.dtype, device=boxes.device)
                )
                all_scores.append(inst.scores)
                all_classes.append(inst.pred_classes)
        merged = self._merge_detections(
            torch.cat(all_boxes), torch.cat(all_scores), torch.cat(all_classes), orig_shape
        )
        del all_boxes, all_scores, all_classes
        # Same clipping and empty-box removal as plain inference's postprocessing (scale 1 here).
        merged = detector_postprocess(merged, *orig_shape)
        if head_features:
            heads = self._head_passes(merged)
            if len(merged) == 0:
                self._add_empty_views(heads)
            else:
                self._add_views(heads, augmented_inputs, tfms, batches, cached, merged, orig_shape)
            self._finish_heads(heads, merged, orig_shape)
        return {"instances": merged}

    def __call__(self, batched_inputs):
        """Same input/output format as ``GeneralizedRCNN.forward``.

        Divergence: the base class reads "file_name" again when an input has no "image"; an
        input with precomputed "views" needs none.
        """
        outputs = []
        for x in batched_inputs:
            if "views" in x:
                outputs.append(self._inference_one_image(x))
            else:
                outputs.extend(super().__call__([x]))
        return outputs

    def _get_augmented_inputs(self, input):
        """The views of an image and their transforms.

        Divergence: precomputed views (input["views"], input["transforms"]) are used as they are;
        otherwise, as the base class, ``tta_mapper`` makes them here.
        """
        if "views" in input:
            if len(input["views"]) != len(input["transforms"]):
                raise ValueError("An input's precomputed views and transforms differ in number.")
            return [dict(v) for v in input["views"]], list(input["transforms"])
        return super()._get_augmented_inputs(input)

    @contextmanager
    def _turn_off_roi_heads(self, attrs):
        """Switch the named heads of ``model.roi_heads`` off for the block.

        Divergence: the base class switches them back on only when the block ends normally; an
        exception in one view (e.g. an out-of-memory) would leave the keypoint head off for
        every later image. Here they are switched back on in any case.
        """
        roi_heads = self.model.roi_heads
        old = {attr: getattr(roi_heads, attr) for attr in attrs if hasattr(roi_heads, attr)}
        for attr in old:
            setattr(roi_heads, attr, False)
        try:
            yield
        finally:
            for attr, value in old.items():
                setattr(roi_heads, attr, value)

    def _view_batches(self, augmented_inputs) -> List[List[int]]:
        """Group consecutive views of equal image size into batches of at most batch_size.

        Divergence: the base class batches any views together and pads them to the largest;
        here a batch never mixes sizes (no padding waste) and keeps a view with its flip.
        """
        batches: List[List[int]] = []
        for i, view in enumerate(augmented_inputs):
            shape = tuple(view["image"].shape[-2:])
            if batches:
                last = batches[-1]
                if (
                    len(last) < self.batch_size
                    and tuple(augmented_inputs[last[0]]["image"].shape[-2:]) == shape
                ):
                    last.append(i)
                    continue
            batches.append([i])
        return batches

    def _backbone(self, inputs):
        images = self.model.preprocess_image(inputs)
        return images, self.model.backbone(images.tensor)

    def _detect_boxes(self, inputs):
        """Backbone, RPN and box head on a batch of views (GeneralizedRCNN.inference's steps,
        keeping the features).

        Returns:
            (list[Instances] in view coordinates, dict of features)
        """
        images, features = self._backbone(inputs)
        proposals, _ = self.model.proposal_generator(images, features, None)
        with self._turn_off_roi_heads(["mask_on", "keypoint_on"]):
            instances, _ = self.model.roi_heads(images, features, proposals, None)
        return instances, features

    def _merge_detections(self, all_boxes, all_scores, all_classes, shape_hw):
        """Per-class NMS over the union of all views' boxes, then optional box voting.

        Divergence: the base class fills the score matrix one box at a time from Python lists;
        here it is filled at once from tensors, and box voting is added.

        Args:
            all_boxes: (M, 4) XYXY boxes in the image; all_scores, all_classes: (M,) tensors.
            shape_hw: the image's (height, width).

        Returns:
            Instances with pred_boxes, scores, pred_classes.
        """
        num_classes = self.cfg.MODEL.ROI_HEADS.NUM_CLASSES
        # +1 column: fast_rcnn_inference expects background scores as well.
        scores_2d = all_scores.new_zeros(len(all_boxes), num_classes + 1)
        scores_2d[torch.arange(len(all_boxes), device=all_boxes.device), all_classes] = all_scores
        # 1e-8 as the base class: the views already applied MODEL.ROI_HEADS.SCORE_THRESH_TEST.
        merged, _ = fast_rcnn_inference_single_image(
            all_boxes,
            scores_2d,
            shape_hw,
            1e-8,
            self.cfg.MODEL.ROI_HEADS.NMS_THRESH_TEST,
            self.cfg.TEST.DETECTIONS_PER_IMAGE,
        )
        if self.box_voting and len(merged) > 0:
            pool = Boxes(all_boxes.clone())
            pool.clip(shape_hw)  # the kept boxes were clipped the same way
            merged.pred_boxes = Boxes(
                box_voting(
                    merged.pred_boxes.tensor,
                    merged.pred_classes,
                    pool.tensor,
                    all_scores,
                    all_classes,
                    self.box_voting_iou,
                )
            )
        return merged

    def _view_box_masks(self, augmented_inputs, merged: Instances, orig_shape) -> torch.Tensor:
        """Which views predict masks and keypoints for which boxes.

        With DD.TTA.SCALE_SIZE_DEP, as Detectron's combine_heatmaps_size_dep: a view is
        down-scaling (up-scaling) when it resizes the image less (more) than plain inference
        (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) does; boxes smaller than AREA_TH (in the image)
        drop the down-scaling views, the others drop the up-scaling views. A box left without
        any view (no view at the plain scale) keeps all views.

        Returns:
            (V, R) bool.
        """
        num_views, num_boxes = len(augmented_inputs), len(merged)
        device = merged.pred_boxes.tensor.device
        masks = torch.ones(num_views, num_boxes, dtype=torch.bool, device=device)
        if not self.scale_size_dep:
            return masks
        height, width = orig_shape
        min_size, max_size = self.cfg.INPUT.MIN_SIZE_TEST, self.cfg.INPUT.MAX_SIZE_TEST
        base_h = (
            ResizeShortestEdge.get_output_shape(height, width, min_size, max_size)[0]
            if min_size > 0
            else height
        )
        base_scale = base_h / height
        small = merged.pred_boxes.area() < self.area_th
        for v, view in enumerate(augmented_inputs):
            scale = view["image"].shape[-2] / height
            # A relative tolerance: sizes are rounded to whole pixels.
            if scale < base_scale * (1 - 1e-3):
                masks[v] = ~small
            elif scale > base_scale * (1 + 1e-3):
                masks[v] = small
        masks[:, ~masks.any(dim=0)] = True
        return masks

    def _head_in_features(self) -> List[str]:
        """The feature levels the mask and keypoint heads read (none for a box-only model)."""
        roi_heads = self.model.roi_heads
        names = []
        for head in Heads(self.mask_on, self.keypoint_on).roi_head_names:
            names += [f for f in getattr(roi_heads, f"{head}_in_features") if f not in names]
        return names

    def _head_passes(self, merged: Instances) -> List[_HeadPass]:
        """The mask and keypoint heads to run on the merged boxes, each with its reducer."""
        roi_heads = self.model.roi_heads
        heads = []
        if self.mask_on:
            heads.append(
                _HeadPass(
                    roi_heads.mask_pooler,
                    roi_heads.mask_in_features,
                    roi_heads.mask_head.layers,
                    unflip_mask_logits,
                    MaskReducer(merged.pred_classes, self.mask_reduce),
                )
            )
        if self.keypoint_on:
            heads.append(
                _HeadPass(
                    roi_heads.keypoint_pooler,
                    roi_heads.keypoint_in_features,
                    roi_heads.keypoint_head.layers,
                    self._unflip_keypoints,
                    HeatmapReducer(len(merged), self.keypoint_reduce),
                )
            )
        return heads

    def _unflip_keypoints(self, logits: torch.Tensor) -> torch.Tensor:
        if self.keypoint_flip_indices is None:
            raise ValueError(
                "A flipped view needs keypoint flip indices: set TEST.AUG.FLIP True "
                "(flip map from the metadata) or pass keypoint_flip_indices."
            )
        return unflip_keypoint_logits(logits, self.keypoint_flip_indices)

    def _add_views(self, heads, augmented_inputs, tfms, batches, cached, merged, orig_shape):
        """Every head's logits for the merged boxes in every view, added to its reducer; see
        the class docstring."""
        boxes_np = merged.pred_boxes.tensor.cpu().numpy()
        device = merged.pred_boxes.tensor.device
        box_masks = self._view_box_masks(augmented_inputs, merged, orig_shape)
        for b, view_ids in enumerate(batches):
            if not bool(box_masks[view_ids].any()):
                cached.pop(b, None)
                continue
            if self.cache_features:
                features = cached.pop(b)
            else:
                _, features = self._backbone([augmented_inputs[i] for i in view_ids])
            box_lists = []
            for i in view_ids:
                # The same box, mapped into the view (resized, and mirrored when flipped).
                view_boxes = torch.as_tensor(tfms[i].apply_box(boxes_np), device=device)
                box_lists.append(Boxes(view_boxes[box_masks[i]]))
            pooled = [h.pooler([features[f] for f in h.in_features], box_lists) for h in heads]
            del features  # this view is done: free its features before the next one
            for head in heads:
                logits = head.layers(pooled.pop(0))
                for i, view_logits in zip(view_ids, logits.split([len(x) for x in box_lists])):
                    if _is_flipped(tfms[i]):
                        view_logits = head.unflip(view_logits)
                    head.reducer.add(view_logits, box_masks[i])
                del logits

    def _add_empty_views(self, heads) -> None:
        # No box: each head's output with 0 rows, as plain inference gives it.
        backbone_shape = self.model.backbone.output_shape()
        for head in heads:
            channels = backbone_shape[head.in_features[0]].channels
            device = next(iter(self.model.parameters())).device
            empty = torch.zeros((0, channels) + tuple(head.pooler.output_size), device=device)
            head.reducer.add(head.layers(empty))

    def _finish_heads(self, heads, merged: Instances, orig_shape) -> None:
        """Set the combined outputs on ``merged``: hard masks at the image's resolution,
        decoded keypoints."""
        for head in heads:
            combined = head.reducer.result()
            if isinstance(head.reducer, MaskReducer):
                merged.pred_masks = paste_masks_in_image(
                    combined[:, 0], merged.pred_boxes, orig_shape, threshold=MASK_THRESHOLD
                )
            else:
                _decode_keypoints(combined, merged, self.keypoint_decode_max_size)


def build_rcnn_tta(cfg, model) -> RCNNWithTTA:
    """The multi-view ensembler for an R-CNN of any heads (boxes, and masks and keypoints as
    MODEL.MASK_ON and MODEL.KEYPOINT_ON say).

    Args:
        cfg: the model's config with TEST.AUG's views and DD.TTA's settings.
        model: a GeneralizedRCNN.
    """
    return RCNNWithTTA(cfg, model)
