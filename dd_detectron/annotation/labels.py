"""
From the saved detections of every unlabeled image to hard labels.

Three reads of the progress chunks, each holding one chunk's arrays at a time:

1. the detection scores of all images -> the score threshold (fixed, or calibrated on all of
   them: mean kept instances per readable image = the labeled data's mean instances per image);
   in per-category mode, also one threshold per category (thresholds.py), applied to the
   detections of that class;
2. keypoint models: the keypoint scores of the instances kept by it -> the keypoint threshold
   (fixed, or calibrated: mean keypoints with v = 2 per kept instance = the labeled data's mean
   labeled keypoints per instance);
3. the labels: instances with score >= the score threshold (of their class), with their hard
   mask (mask models) and keypoints with score >= the keypoint threshold labeled v = 2 (the
   others v = 0), then instances with fewer than MIN_KEYPOINTS visible keypoints dropped. That
   last filter comes after calibration, so it can lower the achieved instances per image below
   the target; the report gives both.

The result depends only on the set of (image, detections) pairs, not on how they were split into
chunks, processes or runs: images are ordered by id. An image held by several chunks counts once
(the first chunk in name order), for the labels and for the calibration alike.
"""

import logging
from dataclasses import dataclass
from typing import Dict, List, Optional, Sequence

import numpy as np

from .coco_writer import ImageLabels
from .progress import ProgressStore, split_rles
from .thresholds import (
    CategoryThreshold,
    LabeledStats,
    ThresholdChoice,
    category_thresholds,
    threshold_for_mean,
)

__all__ = ["LabelingRule", "Labeling", "make_labels", "image_id_sort_key"]

logger = logging.getLogger(__name__)


def image_id_sort_key(image_id):
    """Order of images in the output: ints numerically, strings after them, lexically."""
    return (isinstance(image_id, str), image_id)


@dataclass(frozen=True)
class LabelingRule:
    """How detections become labels (DD.ANNOTATE).

    Attributes:
        score_thresh: detection score threshold, None for "auto".
        keypoint_thresh: keypoint score threshold, None for "auto".
        min_keypoints: fewest visible keypoints a kept instance needs (keypoint models).
        per_category: an "auto" score threshold per category (SCORE_THRESH_MODE
            "per_category"), else one for all.
        category_min_instances: fewest labeled instances for a category's own threshold.
    """

    score_thresh: Optional[float]
    keypoint_thresh: Optional[float]
    min_keypoints: int
    per_category: bool = False
    category_min_instances: int = 1


@dataclass
class Labeling:
    """The labels and what the report needs.

    Attributes:
        labels: every readable image's labels, in output order.
        failed: [image_id, file_name, reason] of images that could not be read, by id.
        score: the (global) score threshold chosen; keypoint: the keypoint threshold chosen,
            None without a keypoint head.
        all_scores: every detection's score (calibration of the score threshold).
        candidate_keypoint_scores: (n, K) keypoint scores of the instances above the score
            threshold (calibration of the keypoint threshold); (0, 0) without a keypoint head.
        dropped_min_keypoints: instances dropped for too few visible keypoints.
        num_keypoints: K, 0 without a keypoint head.
        category_scores: per-category mode: each category's threshold; else None.
        all_classes: the class id of each of all_scores.
    """

    labels: List[ImageLabels]
    failed: List[list]
    score: ThresholdChoice
    keypoint: Optional[ThresholdChoice]
    all_scores: np.ndarray
    candidate_keypoint_scores: np.ndarray
    dropped_min_keypoints: int = 0
    num_keypoints: int = 0
    category_scores: Optional[List[CategoryThreshold]] = None
    all_classes: Optional[np.ndarray] = None


def _choose(
    key: str, fixed: Optional[float], scores: np.ndarray, num_units: int, target: Optional[float]
) -> ThresholdChoice:
    if num_units == 0:
        value = float("inf") if fixed is None else fixed
        return ThresholdChoice(key, value, fixed is None, target, 0.0)
    if fixed is None:
        value, achieved = threshold_for_mean(scores, num_units, target)
        return ThresholdChoice(key, value, True, target, achieved)
    achieved = int(np.count_nonzero(scores >= np.float32(fixed))) / num_units
    return ThresholdChoice(key, float(fixed), False, None, achieved)


class _ScoreCut:
    """Which detections pass the score threshold: one float32 value, or one per class."""

    def __init__(self, value: float, per_class: Optional[Sequence[float]] = None):
        self.value = np.float32(value)
        self.per_class = None if per_class is None else np.asarray(per_class, np.float32)

    def keep(self, scores: np.ndarray, classes: np.ndarray) -> np.ndarray:
        if self.per_class is None:
            return scores >= self.value
        return scores >= self.per_class[classes]


def _score_cut(
    rule: LabelingRule,
    labeled: Optional[LabeledStats],
    all_scores: np.ndarray,
    all_classes: np.ndarray,
    num_readable: int,
):
    """Step 1: the global threshold and, in per-category mode, each category's."""
    score = _choose(
        "DD.ANNOTATE.SCORE_THRESH",
        rule.score_thresh,
        all_scores,
        num_readable,
        None if labeled is None else labeled.instances_per_image,
    )
    if not rule.per_category:
        return score, None, _ScoreCut(score.value)
    if labeled is None or not labeled.category_instances:
        raise ValueError(
            "Per-category score thresholds (DD.ANNOTATE.SCORE_THRESH_MODE 'per_category') need "
            "the labeled data's instances counted by category (labeled_statistics num_classes)."
        )
    categories = category_thresholds(
        all_scores,
        all_classes,
        num_readable,
        labeled,
        score,
        rule.category_min_instances,
    )
    return score, categories, _ScoreCut(score.value, [c.choice.value for c in categories])


def make_labels(
    store: ProgressStore,
    images: Dict[object, dict],
    rule: LabelingRule,
    labeled: Optional[LabeledStats],
    num_keypoints: int,
    chunk_names: Optional[Sequence[str]] = None,
    *,
    masks: bool = False,
) -> Labeling:
    """Turn the saved detections into hard labels (see the module docstring).

    An image's detections count once: should an image be in several chunks (e.g. two jobs
    labeled into one folder), the first chunk in name order that holds it counts, for the
    labels and for the scores the thresholds are calibrated on, and the others are ignored.

    Args:
        store: the run's progress directory, holding every image's detections.
        images: image_id -> dataset record (file_name, height, width) of every image to label.
        rule: thresholds and the keypoint minimum.
        labeled: statistics of the labeled data; needed for "auto" thresholds (with
            category_instances in per-category mode).
        num_keypoints: K; 0 for a model without a keypoint head.
        chunk_names: the chunk files to read; default: the directory listing.
        masks: the chunks hold masks (a mask model): the labels get them.

    Returns:
        Labeling.

    Raises:
        RuntimeError: some image has no saved detections (the progress directory is not
            complete, e.g. not shared by all processes).
    """
    names = store.chunk_names() if chunk_names is None else sorted(set(chunk_names))
    keypoints_on = num_keypoints > 0
    # 1. Scores of all detections, and which images of each chunk count (first occurrence).
    scores, classes, sizes, failed, counted = [], [], {}, [], []
    seen = set()
    for chunk in store.iter_chunks(("num_instances", "scores", "classes"), names):
        owned = []
        for image_id, h, w in chunk["meta"]["images"]:
            owned.append(image_id not in seen)
            if owned[-1]:
                seen.add(image_id)
                sizes[image_id] = (h, w)
        for entry in chunk["meta"]["failed"]:
            if entry[0] not in seen:
                seen.add(entry[0])
                failed.append(entry)
        owned = np.asarray(owned, dtype=bool)
        instances = np.repeat(owned, chunk["num_instances"]) if len(owned) else np.zeros(0, bool)
        counted.append((owned, instances))
        scores.append(chunk["scores"][instances])
        classes.append(chunk["classes"][instances])
    missing = set(images) - seen
    if missing:
        example = sorted(missing, key=image_id_sort_key)[:5]
        raise RuntimeError(
            f"{store.root}: {len(missing)} images have no saved detections (e.g. ids {example}); "
            "is the output directory shared by all processes?"
        )
    all_scores = np.concatenate(scores) if scores else np.zeros((0,), np.float32)
    all_classes = np.concatenate(classes) if classes else np.zeros((0,), np.int32)
    score, category_scores, cut = _score_cut(rule, labeled, all_scores, all_classes, len(sizes))

    # 2. Keypoint scores of the instances above the score threshold.
    keypoint, candidate_kp = None, np.zeros((0, 0), np.float32)
    if keypoints_on:
        keypoint, candidate_kp = _keypoint_threshold(
            store, names, counted, cut, rule, labeled, num_keypoints
        )
    keypoint_t = None if keypoint is None else np.float32(keypoint.value)

    # 3. Labels.
    by_id: Dict[object, ImageLabels] = {}
    dropped = 0
    arrays = ("num_instances", "boxes", "scores", "classes")
    arrays += ("keypoints",) if keypoints_on else ()
    arrays += ("mask_rle", "mask_rle_lengths") if masks else ()
    for chunk, (owned, _) in zip(store.iter_chunks(arrays, names), counted):
        offsets = np.concatenate([[0], np.cumsum(chunk["num_instances"])])
        rles = split_rles(chunk["mask_rle"], chunk["mask_rle_lengths"]) if masks else None
        entries = zip(chunk["meta"]["images"], owned, offsets[:-1], offsets[1:])
        for (image_id, height, width), counts, start, end in entries:
            if not counts:
                continue
            sl = slice(int(start), int(end))
            keep = cut.keep(chunk["scores"][sl], chunk["classes"][sl])
            if keypoints_on:
                keypoints = chunk["keypoints"][sl][keep]
                visible = keypoints[:, :, 2] >= keypoint_t
                enough = visible.sum(axis=1) >= rule.min_keypoints
                dropped += int(np.count_nonzero(~enough))
                keypoints, visible = keypoints[enough], visible[enough]
            else:
                keypoints = visible = None
                enough = np.ones(int(np.count_nonzero(keep)), dtype=bool)
            kept = np.flatnonzero(keep)[enough]
            record = images[image_id]
            by_id[image_id] = ImageLabels(
                image_id=image_id,
                file_name=record["file_name"],
                height=height,
                width=width,
                boxes=chunk["boxes"][sl][kept],
                scores=chunk["scores"][sl][kept],
                classes=chunk["classes"][sl][kept],
                keypoints=keypoints,
                visible=visible,
                masks=None if rles is None else _image_masks(rles[sl], kept, height, width),
            )
    labels = [by_id[i] for i in sorted(by_id, key=image_id_sort_key)]
    failed.sort(key=lambda f: image_id_sort_key(f[0]))
    return Labeling(
        labels=labels,
        failed=failed,
        score=score,
        keypoint=keypoint,
        all_scores=all_scores,
        candidate_keypoint_scores=candidate_kp,
        dropped_min_keypoints=dropped,
        num_keypoints=num_keypoints,
        category_scores=category_scores,
        all_classes=all_classes,
    )


def _keypoint_threshold(store, names, counted, cut, rule, labeled, num_keypoints):
    """Step 2: the keypoint threshold, from the keypoint scores of the instances kept."""
    candidates = [
        chunk["keypoints"][instances & cut.keep(chunk["scores"], chunk["classes"]), :, 2]
        for chunk, (_, instances) in zip(
            store.iter_chunks(("scores", "classes", "keypoints"), names), counted
        )
    ]
    candidate_kp = (
        np.concatenate(candidates) if candidates else np.zeros((0, num_keypoints), np.float32)
    )
    keypoint = _choose(
        "DD.ANNOTATE.KEYPOINT_THRESH",
        rule.keypoint_thresh,
        candidate_kp.reshape(-1),
        len(candidate_kp),
        None if labeled is None else labeled.keypoints_per_instance,
    )
    return keypoint, candidate_kp


def _image_masks(rles: List[str], kept: np.ndarray, height: int, width: int) -> List[dict]:
    """The COCO RLE dicts of an image's kept instances."""
    return [{"size": [int(height), int(width)], "counts": rles[i]} for i in kept.tolist()]
