"""
Instance and keypoint thresholds of the annotation stage, fixed or calibrated ("auto").

The paper keeps a teacher's detections above a score threshold chosen so that the mean number of
instances per unlabeled image matches the mean number of annotated instances per labeled image;
keypoint visibility is calibrated the same way (mean labeled keypoints per instance).

Labeled-data convention (the statistics a threshold is calibrated against), over the dataset
dicts of DATASETS.TRAIN as registered, i.e. before training-time filtering:

- images: all of them, including those without any instance (an unlabeled set has those too);
- instances: non-crowd annotations that hold what a generated label is made of (heads.py's
  ``instance_kind``): for a keypoint model, at least one labeled keypoint (v > 0); for a mask
  model, a non-empty ``segmentation``; for a box-only model, every non-crowd annotation;
- keypoints per instance: the number of labeled keypoints (v > 0) of those instances.

Per category (DD.ANNOTATE.SCORE_THRESH_MODE "per_category"): category c with n_c labeled
instances (same convention) over N labeled images gets the threshold at which its detections kept
per unlabeled image average n_c / N; a category with fewer than DD.ANNOTATE.CATEGORY_MIN_INSTANCES
labeled instances (too few to estimate its rate) takes the global threshold instead, the one
"global" mode would use for every category.

Comparisons are made in float32, the precision of the teacher's scores: a calibrated threshold is
always one of the scores themselves (or the next float32 above one).
"""

import logging
import math
from dataclasses import asdict, dataclass
from typing import Iterable, List, Optional, Tuple

import numpy as np

__all__ = [
    "LabeledStats",
    "labeled_statistics",
    "threshold_for_mean",
    "ThresholdChoice",
    "CategoryThreshold",
    "category_thresholds",
    "INSTANCE_KINDS",
]

# What counts as a labeled instance (see the module docstring), by what the labels hold.
INSTANCE_KINDS = ("keypoints", "masks", "boxes")

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabeledStats:
    """What the labeled data looks like, under the module's convention.

    Attributes:
        datasets: the labeled dataset names.
        num_images: images in those datasets.
        num_instances: the instances (by default non-crowd annotations with >= 1 labeled
            keypoint; see the module docstring).
        num_keypoints: labeled keypoints (v > 0) of those annotations.
        category_instances: instances of each contiguous category id, when counted (per-category
            calibration), else empty.
    """

    datasets: Tuple[str, ...]
    num_images: int
    num_instances: int
    num_keypoints: int
    category_instances: Tuple[int, ...] = ()

    @property
    def instances_per_image(self) -> float:
        return self.num_instances / self.num_images if self.num_images else 0.0

    @property
    def keypoints_per_instance(self) -> float:
        return self.num_keypoints / self.num_instances if self.num_instances else 0.0

    def to_dict(self) -> dict:
        """JSON-serialisable summary, means included."""
        out = asdict(self)
        out["datasets"] = list(self.datasets)
        if not self.category_instances:
            del out["category_instances"]  # global calibration: not counted
        else:
            out["category_instances"] = list(self.category_instances)
        out["instances_per_image"] = self.instances_per_image
        out["keypoints_per_instance"] = self.keypoints_per_instance
        return out


def _is_instance(ann: dict, kind: str) -> bool:
    if ann.get("iscrowd", 0):
        return False
    if kind == "keypoints":
        return any(v > 0 for v in (ann.get("keypoints") or ())[2::3])
    if kind == "masks":
        return bool(ann.get("segmentation"))
    return True


def labeled_statistics(
    dataset_dicts: Iterable[dict],
    datasets: Tuple[str, ...],
    kind: str = "keypoints",
    num_classes: Optional[int] = None,
) -> LabeledStats:
    """Count images, instances and labeled keypoints of labeled data.

    Args:
        dataset_dicts: detectron2 dataset dicts (keypoints as flat [x, y, v] * K lists,
            category_id contiguous).
        datasets: their dataset names, kept in the result and named in errors.
        kind: what an instance is, one of INSTANCE_KINDS (see the module docstring).
        num_classes: when given, also count the instances of each category 0..num_classes-1.

    Returns:
        LabeledStats (see the module docstring for what is counted).

    Raises:
        ValueError: an unknown kind, or an instance's category_id outside 0..num_classes-1.
    """
    if kind not in INSTANCE_KINDS:
        raise ValueError(f"labeled_statistics: kind must be one of {INSTANCE_KINDS}, got {kind!r}")
    num_images = num_instances = num_keypoints = 0
    per_category = [0] * (num_classes or 0)
    for record in dataset_dicts:
        num_images += 1
        for ann in record.get("annotations", ()):
            if not _is_instance(ann, kind):
                continue
            num_instances += 1
            num_keypoints += int(sum(1 for v in (ann.get("keypoints") or ())[2::3] if v > 0))
            if num_classes is not None:
                category = ann.get("category_id")
                if not isinstance(category, int) or not 0 <= category < num_classes:
                    raise ValueError(
                        f"Labeled data {tuple(datasets)}: an annotation of "
                        f"{record.get('file_name')} has category_id {category!r}, not one of the "
                        f"model's {num_classes} classes (MODEL.ROI_HEADS.NUM_CLASSES)."
                    )
                per_category[category] += 1
    return LabeledStats(
        tuple(datasets), num_images, num_instances, num_keypoints, tuple(per_category)
    )


@dataclass(frozen=True)
class ThresholdChoice:
    """A threshold and how it was chosen.

    Attributes:
        key: the config key it comes from.
        value: the threshold; kept when score >= value.
        auto: True when calibrated.
        target: the calibration target (a mean count), or None for a fixed threshold.
        achieved: the mean count the threshold gives on the data it was chosen on.
    """

    key: str
    value: float
    auto: bool
    target: Optional[float]
    achieved: float

    def to_dict(self) -> dict:
        return asdict(self)


def _float32_above(x: np.float32) -> np.float32:
    return np.nextafter(np.float32(x), np.float32(np.inf))


def threshold_for_mean(
    scores: np.ndarray, num_units: int, target_mean: float
) -> Tuple[float, float]:
    """The threshold t at which count(scores >= t) / num_units is closest to target_mean.

    Args:
        scores: the scores of all candidates (e.g. every detection of every unlabeled image),
            float32.
        num_units: what the mean is over (e.g. the number of unlabeled images), > 0.
        target_mean: the wanted mean count per unit.

    Returns:
        (t, achieved mean). t keeps the round(target_mean * num_units) highest scores; with ties
        at the cut, the side closer to that count wins (the higher threshold on a draw). When the
        target asks for more than all candidates, t keeps them all.
    """
    if num_units <= 0:
        raise ValueError(f"threshold_for_mean: num_units must be > 0, got {num_units}")
    scores = np.sort(np.asarray(scores, dtype=np.float32))[::-1]
    wanted = int(math.floor(target_mean * num_units + 0.5))
    if len(scores) == 0:
        return float("inf"), 0.0
    if wanted <= 0:
        t = _float32_above(scores[0])
    elif wanted >= len(scores):
        if wanted > len(scores):
            logger.warning(
                "Calibration wants %d kept of %d candidates (mean %.3f per unit): keeping all; "
                "lower the model's score threshold or raise its detections per image to reach it.",
                wanted,
                len(scores),
                target_mean,
            )
        t = scores[-1]
    else:
        at_cut = scores[wanted - 1]
        keep_low = int(np.count_nonzero(scores >= at_cut))  # >= wanted, more with ties
        t_high = _float32_above(at_cut)
        keep_high = int(np.count_nonzero(scores >= t_high))  # < wanted
        t = at_cut if (keep_low - wanted) < (wanted - keep_high) else t_high
    achieved = int(np.count_nonzero(scores >= t)) / num_units
    return float(t), achieved


@dataclass(frozen=True)
class CategoryThreshold:
    """The score threshold of one category (per-category mode).

    Attributes:
        class_id: the model's class id.
        labeled_instances: its instances in the labeled data.
        calibrated: True when calibrated on its own; False when it took the global threshold
            (fewer than DD.ANNOTATE.CATEGORY_MIN_INSTANCES labeled instances).
        choice: the threshold; ``achieved``: the category's kept detections per unlabeled image.
    """

    class_id: int
    labeled_instances: int
    calibrated: bool
    choice: ThresholdChoice

    def to_dict(self) -> dict:
        return asdict(self)  # recurses into ``choice``


def category_thresholds(
    scores: np.ndarray,
    classes: np.ndarray,
    num_units: int,
    labeled: LabeledStats,
    fallback: ThresholdChoice,
    min_instances: int,
) -> List[CategoryThreshold]:
    """Per-category "auto" score thresholds (see the module docstring for the rule).

    Args:
        scores, classes: every counted detection's score (float32) and class id.
        num_units: readable unlabeled images.
        labeled: the labeled statistics, with category_instances.
        fallback: the global threshold, for categories with too few labeled instances.
        min_instances: fewest labeled instances a category needs for its own calibration.

    Returns:
        one CategoryThreshold per category, by class id.
    """
    out = []
    for class_id, count in enumerate(labeled.category_instances):
        own = scores[classes == class_id]
        calibrated = count >= min_instances and num_units > 0 and labeled.num_images > 0
        if calibrated:
            target = count / labeled.num_images
            value, achieved = threshold_for_mean(own, num_units, target)
            choice = ThresholdChoice(fallback.key, value, True, target, achieved)
        else:
            kept = int(np.count_nonzero(own >= np.float32(fallback.value)))
            achieved = kept / num_units if num_units else 0.0
            choice = ThresholdChoice(fallback.key, fallback.value, fallback.auto, None, achieved)
        out.append(CategoryThreshold(class_id, int(count), calibrated, choice))
    return out
