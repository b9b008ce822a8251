"""
Instance and keypoint thresholds of the annotation stage, fixed or calibrated ("auto").

The paper keeps a teacher's detections above a score threshold chosen so that the mean number of
instances per unlabeled image matches the mean number of annotated instances per labeled image;
keypoint visibility is calibrated the same way (mean labeled keypoints per instance).

Labeled-data convention (the statistics a threshold is calibrated against), over the dataset
dicts of DATASETS.TRAIN as registered, i.e. before training-time filtering:

- images: all of them, including those without any person (an unlabeled set has those too);
- instances: non-crowd annotations with at least one labeled keypoint (v > 0): what a keypoint
  label is, and what the generated labels are made of;
- keypoints per instance: the number of labeled keypoints (v > 0) of those instances.

Comparisons are made in float32, the precision of the teacher's scores: a calibrated threshold is
always one of the scores themselves (or the next float32 above one).
"""

import logging
import math
from dataclasses import asdict, dataclass
from typing import Iterable, Optional, Tuple

import numpy as np

__all__ = ["LabeledStats", "labeled_statistics", "threshold_for_mean", "ThresholdChoice"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class LabeledStats:
    """What the labeled data looks like, under the module's convention.

    Attributes:
        datasets: the labeled dataset names.
        num_images: images in those datasets.
        num_instances: non-crowd annotations with >= 1 labeled keypoint.
        num_keypoints: labeled keypoints (v > 0) of those annotations.
    """

    datasets: Tuple[str, ...]
    num_images: int
    num_instances: int
    num_keypoints: int

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
        out["instances_per_image"] = self.instances_per_image
        out["keypoints_per_instance"] = self.keypoints_per_instance
        return out


def labeled_statistics(dataset_dicts: Iterable[dict], datasets: Tuple[str, ...]) -> LabeledStats:
    """Count images, keypoint instances and labeled keypoints of labeled data.

    Args:
        dataset_dicts: detectron2 dataset dicts (keypoints as flat [x, y, v] * K lists).
        datasets: their dataset names, kept in the result and named in errors.

    Returns:
        LabeledStats (see the module docstring for what is counted).
    """
    num_images = num_instances = num_keypoints = 0
    for record in dataset_dicts:
        num_images += 1
        for ann in record.get("annotations", ()):
            if ann.get("iscrowd", 0):
                continue
            keypoints = ann.get("keypoints")
            if not keypoints:
                continue
            labeled = int(sum(1 for v in keypoints[2::3] if v > 0))
            if labeled > 0:
                num_instances += 1
                num_keypoints += labeled
    return LabeledStats(tuple(datasets), num_images, num_instances, num_keypoints)


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
