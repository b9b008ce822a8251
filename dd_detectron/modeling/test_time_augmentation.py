"""
Multi-transform inference for Keypoint R-CNN: the ensembler of Data Distillation.

The views come from ``TEST.AUG`` (shorter side ``MIN_SIZES``, ``MAX_SIZE``, ``FLIP``). Boxes are
the union of every view's detections mapped back to the image, reduced by per-class NMS and
optional box voting. Keypoints are predicted for the merged boxes only: the keypoint head's raw
heatmap logits in every view (on the same box mapped into that view), un-flipped, combined by
mean or max, then decoded once by detectron2's own decoding, in image coordinates.

Flip convention, shared with detectron2's ``HFlipTransform``: in continuous coordinates (pixel
``i`` covers ``[i, i + 1)``) a flip of width ``W`` maps ``x -> W - x``, so a box ``[x0, x1]``
becomes ``[W - x1, W - x0]``. RoIAlign with ``aligned=True`` (detectron2's "ROIAlignV2", the
default keypoint pooler) samples bin ``j`` of ``P`` at ``x0 + (j + 1/2) * w / P``; for the flipped
box that is ``W - (x0 + (P - 1 - j + 1/2) * w / P)``: the mirror of bin ``P - 1 - j``. The
flipped view's heatmap column ``c`` therefore lies over the image point of column
``S - 1 - c``: reversing the width is exact, with no half-pixel shift. (The legacy
``aligned=False`` pooler shifts the grid by half a feature pixel and breaks this symmetry.)
"""

import logging
from contextlib import contextmanager
from typing import Dict, List, Optional, Sequence

import torch
from detectron2.data.detection_utils import create_keypoint_hflip_indices
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import GeneralizedRCNNWithTTA
from detectron2.modeling.postprocessing import detector_postprocess
from detectron2.modeling.roi_heads.fast_rcnn import fast_rcnn_inference_single_image
from detectron2.structures import Boxes, Instances, heatmaps_to_keypoints, pairwise_iou
from fvcore.transforms import HFlipTransform

__all__ = [
    "KeypointRCNNWithTTA",
    "HeatmapReducer",
    "unflip_keypoint_logits",
    "box_voting",
    "keypoint_flip_indices_from_cfg",
    "bounded_heatmaps_to_keypoints",
]

logger = logging.getLogger(__name__)

# Ways to combine per-view heatmap logits (DD.TTA.KEYPOINT_REDUCE).
KEYPOINT_REDUCE_MODES = ("mean", "max")


def unflip_keypoint_logits(logits: torch.Tensor, flip_indices: Sequence[int]) -> torch.Tensor:
    """Bring heatmap logits predicted in a horizontally flipped view back to the image.

    Args:
        logits: (R, K, S, S) heatmap logits of R boxes in the flipped view.
        flip_indices: K indices; ``flip_indices[k]`` is the keypoint that ``k`` becomes under a
            flip (detectron2's ``create_keypoint_hflip_indices``), e.g. left_eye <-> right_eye.

    Returns:
        (R, K, S, S): width reversed (exact, see the module docstring), and channel ``k`` taken
        from the flipped view's channel ``flip_indices[k]``: what the flipped view calls the
        right eye is the image's left eye.
    """
    index = torch.as_tensor(flip_indices, dtype=torch.long, device=logits.device)
    return logits.flip(dims=[3]).index_select(1, index)


class HeatmapReducer:
    """Combines per-view heatmap logits of the same boxes, one view at a time.

    Only the running result is kept (not every view's heatmaps), so memory does not grow with
    the number of views. A view may cover a subset of the boxes (size-dependent selection).
    """

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
        self.mode = mode
        self.num_boxes = num_boxes
        self._acc: Optional[torch.Tensor] = None
        self._count: Optional[torch.Tensor] = None

    def add(self, logits: torch.Tensor, box_mask: Optional[torch.Tensor] = None) -> None:
        """Add one view.

        Args:
            logits: (M, K, S, S) logits in the image's orientation, for the boxes selected by
                ``box_mask`` (M = its number of True entries), or for all R boxes.
            box_mask: (R,) bool, or None for all boxes.
        """
        if self._acc is None:
            shape = (self.num_boxes,) + tuple(logits.shape[1:])
            # Max starts from -inf so that a box's first view is taken as it is.
            fill = 0.0 if self.mode == "mean" else float("-inf")
            self._acc = logits.new_full(shape, fill)
            self._count = torch.zeros(self.num_boxes, dtype=logits.dtype, device=logits.device)
        if box_mask is None:
            box_mask = torch.ones(self.num_boxes, dtype=torch.bool, device=logits.device)
        if self.mode == "mean":
            self._acc[box_mask] += logits
        else:
            self._acc[box_mask] = torch.maximum(self._acc[box_mask], logits)
        self._count[box_mask] += 1

    def result(self) -> torch.Tensor:
        """
        Returns:
            (R, K, S, S): the combined logits.

        Raises:
            ValueError: a box was covered by no view.
        """
        if self._acc is None or bool((self._count == 0).any()):
            raise ValueError("HeatmapReducer: a box got no view; every box needs at least one.")
        if self.mode == "mean":
            return self._acc / self._count[:, None, None, None]
        return self._acc


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


class KeypointRCNNWithTTA(GeneralizedRCNNWithTTA):
    """GeneralizedRCNNWithTTA for Keypoint R-CNN: multi-transform inference, one backbone pass
    per view.

    Why this class owns the keypoint case: detectron2's ``GeneralizedRCNNWithTTA`` refuses
    models with ``MODEL.KEYPOINT_ON`` ("TTA for keypoint is not supported yet"), and for a second
    head (masks) it runs the whole model on every view twice: once for boxes, once more, backbone
    included, on the merged boxes. Keypoints also cannot reuse its mask reduction: a flipped
    heatmap must swap its left/right channels, and the result is decoded to points, not pasted.

    What it does, per image:

    1. views from ``tta_mapper`` (default ``DatasetMapperTTA``: ``TEST.AUG``); views of one
       image size (a view and its flip) run as one batch (``DD.TTA.VIEW_BATCH_SIZE``; by default
       on GPU only);
    2. per batch: one backbone pass, RPN and box head; the features the keypoint head reads are
       kept (``DD.TTA.CACHE_FEATURES``) or dropped and recomputed in step 4 (memory bounded
       by one batch of views, for very large images);
    3. boxes: the union of all views' boxes mapped back to the image, per-class NMS
       (``MODEL.ROI_HEADS.NMS_THRESH_TEST``, ``TEST.DETECTIONS_PER_IMAGE``), optional box voting
       (``DD.TTA.BOX_VOTING``, ``BOX_VOTING_IOU``);
    4. keypoints: for the merged boxes, the keypoint head's heatmap logits in every view on the
       box mapped into that view; flipped views un-flipped with the keypoint flip map; combined
       (``DD.TTA.KEYPOINT_REDUCE``, optionally size-dependent: ``DD.TTA.SCALE_SIZE_DEP``,
       ``AREA_TH``) one view at a time, each view's features freed when it is done;
    5. decoding as detectron2's ``keypoint_rcnn_inference`` on the merged boxes, in image
       coordinates: ``pred_keypoints`` (x, y, score) as plain inference reports them; boxes
       larger than ``DD.TTA.KEYPOINT_DECODE_MAX_SIZE`` are decoded in a bounded frame
       (``bounded_heatmaps_to_keypoints``), so a huge photo does not need GBs per box.

    Views made elsewhere (in the DataLoader's workers, ``annotation/inputs.py``) are used as
    they come: an input with "views" and "transforms" (lists, as ``tta_mapper`` makes them)
    needs no "image", and ``tta_mapper`` is not called for it.

    Output: ``{"instances": Instances}`` with pred_boxes, scores, pred_classes, pred_keypoints,
    pred_keypoint_heatmaps (the combined logits), in the input's ``height`` x ``width``.
    """

    def __init__(self, cfg, model, tta_mapper=None, batch_size=None, *, keypoint_flip_indices=None):
        """
        Args:
            cfg: a config with dd-detectron's keys (TEST.AUG.*, DD.TTA.*).
            model: a GeneralizedRCNN with a keypoint head (pooled, e.g.
                KRCNNConvDeconvUpsampleHead).
            tta_mapper: takes a dataset dict with "image" and returns the views, each with
                "transforms"; default ``DatasetMapperTTA(cfg)``.
            batch_size: at most this many views of the same image size run as one batch;
                None: DD.TTA.VIEW_BATCH_SIZE (0 there: 2 on GPU, 1 on CPU).
            keypoint_flip_indices: K flip indices; default from the metadata of DATASETS.TRAIN
                (or TEST), needed only when a view is flipped.
        """
        if not cfg.MODEL.KEYPOINT_ON:
            raise ValueError(
                "KeypointRCNNWithTTA needs a keypoint model: MODEL.KEYPOINT_ON is False."
            )
        if cfg.MODEL.MASK_ON:
            raise ValueError("KeypointRCNNWithTTA does not combine masks: set MODEL.MASK_ON False.")
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

        roi_heads = self.model.roi_heads
        if not getattr(roi_heads, "keypoint_on", False):
            raise ValueError(
                f"KeypointRCNNWithTTA: the model's ROI heads ({type(roi_heads).__name__}) have no "
                "keypoint head (MODEL.KEYPOINT_ON / MODEL.ROI_HEADS.NAME)."
            )
        if getattr(roi_heads, "keypoint_pooler", None) is None:
            raise ValueError(
                "KeypointRCNNWithTTA needs a pooled keypoint head: "
                "MODEL.ROI_KEYPOINT_HEAD.POOLER_TYPE must not be empty."
            )
        tta = cfg.DD.TTA
        HeatmapReducer(0, tta.KEYPOINT_REDUCE)  # checks the mode now, not at the first image
        if not 0.0 < tta.BOX_VOTING_IOU <= 1.0:
            raise ValueError(f"DD.TTA.BOX_VOTING_IOU must be in (0, 1], got {tta.BOX_VOTING_IOU}")
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
        if keypoint_flip_indices is None and cfg.TEST.AUG.FLIP:
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

        cached: Dict[int, Dict[str, torch.Tensor]] = {}
        all_boxes, all_scores, all_classes = [], [], []
        for b, view_ids in enumerate(batches):
            instances, features = self._detect_boxes([augmented_inputs[i] for i in view_ids])
            if self.cache_features:
                cached[b] = {f: features[f] for f in self.model.roi_heads.keypoint_in_features}
            del features  # p6 and the other levels the keypoint head does not read
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

        if len(merged) == 0:
            self._set_empty_keypoints(merged)
        else:
            logits = self._reduce_keypoint_logits(
                augmented_inputs, tfms, batches, cached, merged, orig_shape
            )
            _decode_keypoints(logits, merged, self.keypoint_decode_max_size)
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
        """Which views predict keypoints for which boxes.

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

    def _reduce_keypoint_logits(self, augmented_inputs, tfms, batches, cached, merged, orig_shape):
        """The merged boxes' heatmap logits in every view, combined; see the class docstring.

        Returns:
            (R, K, S, S) combined logits in the image's orientation.
        """
        roi_heads = self.model.roi_heads
        boxes_np = merged.pred_boxes.tensor.cpu().numpy()
        device = merged.pred_boxes.tensor.device
        masks = self._view_box_masks(augmented_inputs, merged, orig_shape)
        reducer = HeatmapReducer(len(merged), self.keypoint_reduce)
        for b, view_ids in enumerate(batches):
            if not bool(masks[view_ids].any()):
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
                box_lists.append(Boxes(view_boxes[masks[i]]))
            pooled = roi_heads.keypoint_pooler(
                [features[f] for f in roi_heads.keypoint_in_features], box_lists
            )
            del features  # this view is done: free its features before the next one
            logits = roi_heads.keypoint_head.layers(pooled)
            del pooled
            for i, view_logits in zip(view_ids, logits.split([len(x) for x in box_lists])):
                if _is_flipped(tfms[i]):
                    if self.keypoint_flip_indices is None:
                        raise ValueError(
                            "A flipped view needs keypoint flip indices: set TEST.AUG.FLIP True "
                            "(flip map from the metadata) or pass keypoint_flip_indices."
                        )
                    view_logits = unflip_keypoint_logits(view_logits, self.keypoint_flip_indices)
                reducer.add(view_logits, masks[i])
            del logits
        return reducer.result()

    def _set_empty_keypoints(self, merged: Instances) -> None:
        # No box: the fields plain inference gives, with 0 rows and the head's heatmap size.
        roi_heads = self.model.roi_heads
        in_feature = roi_heads.keypoint_in_features[0]
        channels = self.model.backbone.output_shape()[in_feature].channels
        resolution = roi_heads.keypoint_pooler.output_size
        device = merged.pred_boxes.tensor.device
        empty = torch.zeros((0, channels) + tuple(resolution), device=device)
        logits = roi_heads.keypoint_head.layers(empty)
        _decode_keypoints(logits, merged, self.keypoint_decode_max_size)
