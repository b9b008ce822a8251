"""
The report written next to the generated labels: a JSON of statistics and a PNG of the
calibration curves (mean kept instances per image against the score threshold, and for keypoint
models mean visible keypoints per instance against the keypoint threshold). Keypoint entries are
there for keypoint models only; per-category thresholds in per-category mode only.
"""

import logging
import math
from typing import Optional, Sequence

import numpy as np

from ..utils import write_atomic
from ..utils.plotting import new_figure, png_bytes
from .labels import Labeling, LabelingRule
from .thresholds import LabeledStats

__all__ = ["labeling_report", "plot_calibration"]

logger = logging.getLogger(__name__)

# Points drawn per calibration curve; more only slows the plot down.
_CURVE_POINTS = 2000


def _finite_or_none(x):
    # A threshold is +inf when there was nothing to keep; JSON has no infinity.
    return x if x is None or math.isfinite(x) else None


def _count_histogram(counts: np.ndarray) -> dict:
    values, freq = np.unique(counts, return_counts=True)
    return {str(int(v)): int(f) for v, f in zip(values, freq)}


def _histogram(values: np.ndarray, lo: float, hi: float, bins: int = 20) -> dict:
    edges = np.linspace(lo, hi, bins + 1)
    counts, _ = np.histogram(values, bins=edges)
    return {"bin_edges": [float(e) for e in edges], "counts": [int(c) for c in counts]}


def labeling_report(
    labeling: Labeling,
    labeled: Optional[LabeledStats],
    rule: LabelingRule,
    datasets: Sequence[str],
    json_file: str,
    class_names: Sequence[str] = (),
) -> dict:
    """Statistics of a labeling, JSON-serialisable and free of timings (reproducible).

    Args:
        labeling: the labels and their thresholds.
        labeled: the labeled data's statistics, or None when not computed.
        rule: the labeling settings.
        datasets: the labeled (unlabeled-data) datasets.
        json_file: the generated JSON's file name.
        class_names: the category names by class id (named in per-category thresholds).

    Returns:
        dict: images (total / labeled / failed), the failed images with reasons, thresholds
        chosen with their targets and achieved means (per category too in per-category mode),
        instances per image and keypoints per instance (mean and histogram), score histograms.
    """
    per_image = np.array([len(x.boxes) for x in labeling.labels], dtype=np.int64)
    score_lo = min(0.0, float(labeling.all_scores.min())) if len(labeling.all_scores) else 0.0
    score_hi = max(1.0, float(labeling.all_scores.max())) if len(labeling.all_scores) else 1.0
    kept_scores = (
        np.concatenate([x.scores for x in labeling.labels])
        if labeling.labels
        else np.zeros((0,), np.float32)
    )
    report = {
        "datasets": list(datasets),
        "json_file": json_file,
        "images": {
            "total": len(labeling.labels) + len(labeling.failed),
            "labeled": len(labeling.labels),
            "failed": len(labeling.failed),
        },
        "failed_images": [
            {"image_id": i, "file_name": f, "error": e} for i, f, e in labeling.failed
        ],
        "labeled_data": None if labeled is None else labeled.to_dict(),
        "score_threshold": _threshold(labeling.score),
    }
    if labeling.category_scores is not None:
        report["score_threshold_per_category"] = [
            dict(c.to_dict(), choice=_threshold(c.choice), name=_name(class_names, c.class_id))
            for c in labeling.category_scores
        ]
    if labeling.keypoint is not None:
        report.update(_keypoint_entries(labeling, rule))
    report["instances"] = int(per_image.sum())
    report["instances_per_image"] = {
        "mean": float(per_image.mean()) if len(per_image) else 0.0,
        "histogram": _count_histogram(per_image),
    }
    if labeling.keypoint is not None:
        report["keypoints_per_instance"] = _keypoints_per_instance(labeling)
    report["detection_score_histogram"] = {
        "all": _histogram(labeling.all_scores, score_lo, score_hi),
        "kept": _histogram(kept_scores, score_lo, score_hi),
    }
    if labeling.keypoint is not None:
        kp = labeling.candidate_keypoint_scores.reshape(-1)
        kp_lo, kp_hi = (float(kp.min()), float(kp.max())) if len(kp) else (0.0, 1.0)
        report["keypoint_score_histogram"] = {
            # Keypoint scores of every instance above the score threshold (before the
            # keypoint threshold), over their own range: they are not bounded to [0, 1].
            "candidates": _histogram(kp, kp_lo, kp_hi),
        }
    return report


def _name(class_names: Sequence[str], class_id: int) -> Optional[str]:
    return class_names[class_id] if class_id < len(class_names) else None


def _threshold(choice) -> dict:
    out = choice.to_dict()
    out["value"] = _finite_or_none(out["value"])
    return out


def _keypoint_entries(labeling: Labeling, rule: LabelingRule) -> dict:
    return {
        "keypoint_threshold": _threshold(labeling.keypoint),
        "min_keypoints": rule.min_keypoints,
        "instances_dropped_min_keypoints": labeling.dropped_min_keypoints,
    }


def _keypoints_per_instance(labeling: Labeling) -> dict:
    visible = (
        np.concatenate([x.visible.sum(axis=1) for x in labeling.labels])
        if labeling.labels
        else np.zeros((0,), np.int64)
    )
    return {
        "mean": float(visible.mean()) if len(visible) else 0.0,
        "histogram": _count_histogram(visible),
    }


def _mean_count_curve(scores: np.ndarray, num_units: int):
    """x: thresholds (descending scores), y: mean count per unit kept at each."""
    s = np.sort(scores)[::-1]
    y = np.arange(1, len(s) + 1) / max(num_units, 1)
    if len(s) > _CURVE_POINTS:
        idx = np.linspace(0, len(s) - 1, _CURVE_POINTS).astype(np.int64)
        s, y = s[idx], y[idx]
    return s, y


def plot_calibration(labeling: Labeling, path: str, class_names: Sequence[str] = ()) -> None:
    """Draw the calibration curves (score; keypoint for keypoint models; each category's in
    per-category mode) to a PNG, atomically.

    Args:
        labeling: the labels, their thresholds and the scores they were calibrated on.
        path: the PNG file.
        class_names: the category names by class id (per-category legend).
    """
    panels = [
        (
            labeling.score,
            labeling.all_scores,
            len(labeling.labels),
            "detection score threshold",
            "mean kept instances per image",
        )
    ]
    if labeling.keypoint is not None:
        panels.append(
            (
                labeling.keypoint,
                labeling.candidate_keypoint_scores.reshape(-1),
                len(labeling.candidate_keypoint_scores),
                "keypoint score threshold",
                "mean visible keypoints per instance",
            )
        )
    per_category = labeling.category_scores is not None
    num_axes = len(panels) + per_category
    fig = new_figure((5.5 * num_axes, 4.2))
    if per_category:
        _plot_categories(fig.add_subplot(1, num_axes, num_axes), labeling, class_names)
    for i, (choice, scores, units, xlabel, ylabel) in enumerate(panels):
        ax = fig.add_subplot(1, num_axes, i + 1)
        x, y = _mean_count_curve(scores, units)
        ax.step(x, y, where="post", color="tab:blue", label="teacher's predictions")
        if choice.target is not None:
            ax.axhline(
                choice.target,
                color="tab:green",
                linestyle="--",
                label=f"target {choice.target:.3f}",
            )
        if math.isfinite(choice.value):
            mode = "auto" if choice.auto else "fixed"
            ax.axvline(
                choice.value,
                color="tab:red",
                linestyle=":",
                label=f"{mode} threshold {choice.value:.4g} -> {choice.achieved:.3f}",
            )
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    write_atomic(path, png_bytes(fig, dpi=100))


def _plot_categories(ax, labeling: Labeling, class_names: Sequence[str]) -> None:
    """Each category's kept detections per image against the score threshold, with its
    threshold (a dot: calibrated on its own; a cross: the global one)."""
    for c in labeling.category_scores:
        scores = labeling.all_scores[labeling.all_classes == c.class_id]
        x, y = _mean_count_curve(scores, len(labeling.labels))
        name = _name(class_names, c.class_id) or str(c.class_id)
        (line,) = ax.step(x, y, where="post", label=name)
        if math.isfinite(c.choice.value):
            ax.plot(
                [c.choice.value],
                [c.choice.achieved],
                "o" if c.calibrated else "x",
                color=line.get_color(),
            )
    ax.set_xlabel("detection score threshold (per category)")
    ax.set_ylabel("mean kept instances per image")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
