"""
The pipeline's report: keypoint AP of every trained model on the evaluation set, the label AP of
every set of generated labels, per-stage wall time; as Markdown, JSON and a PNG chart.

Model AP is read from each training stage's metrics.json (the final evaluation detectron2's
EvalHook runs at the end of training); label AP from each annotation stage's label_quality.json.
"""

import json
import os
from collections import OrderedDict
from typing import Dict, List, Optional

from ..annotation import LABEL_QUALITY_JSON
from ..utils import write_atomic
from ..utils.plotting import new_figure, png_bytes
from .plan import (
    LABELS_MULTIVIEW,
    LABELS_SHIFTED,
    LABELS_SINGLEVIEW,
    ORACLE,
    STUDENT,
    STUDENT_FINETUNE,
    STUDENT_SHIFTED,
    STUDENT_SINGLEVIEW,
    TEACHER,
)

__all__ = [
    "METRICS",
    "REPORT_FILES",
    "read_final_metrics",
    "read_eval_curve",
    "build_report",
    "write_report",
]

METRICS = ("AP", "AP50", "AP75", "APm", "APl")
MODEL_ROWS = OrderedDict(
    [
        (TEACHER, "teacher (labeled only)"),
        (STUDENT, "student (labeled + multi-view labels)"),
        (STUDENT_SINGLEVIEW, "student (labeled + single-view labels)"),
        (STUDENT_FINETUNE, "student fine-tuned from the teacher"),
        (STUDENT_SHIFTED, "student (labeled + shifted-split labels)"),
        (ORACLE, "oracle (labeled + true labels of unlabeled)"),
    ]
)
LABEL_ROWS = OrderedDict(
    [
        (LABELS_MULTIVIEW, "multi-view labels of the unlabeled split"),
        (LABELS_SINGLEVIEW, "single-view labels of the unlabeled split"),
        (LABELS_SHIFTED, "multi-view labels of the shifted split"),
    ]
)
# detectron2's JSONWriter file in a training stage's OUTPUT_DIR.
METRICS_JSON = "metrics.json"
# What write_report writes into DD.PIPELINE.OUTPUT_DIR, by extension.
REPORT_FILES = {ext: f"report.{ext}" for ext in ("md", "json", "png")}


def _metrics_lines(output_dir: str) -> List[dict]:
    path = os.path.join(output_dir, METRICS_JSON)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_eval_curve(output_dir: str) -> List[dict]:
    """Every evaluation logged during training: [{"iteration": i, "iterations_done": n, "AP": ...}].

    An evaluation during training is logged at the step it follows (step i: i + 1 iterations
    done), detectron2's final one after the loop, at MAX_ITER (MAX_ITER done): only the former
    share their step with a training line.
    """
    lines = _metrics_lines(output_dir)
    training_steps = {line.get("iteration") for line in lines if "total_loss" in line}
    curve = []
    for line in lines:
        if "keypoints/AP" in line:
            step = line.get("iteration")
            curve.append(
                {
                    "iteration": step,
                    "iterations_done": step + 1 if step in training_steps else step,
                    **{m: line.get(f"keypoints/{m}") for m in METRICS},
                }
            )
    return curve


def read_final_metrics(output_dir: str) -> Optional[Dict[str, float]]:
    """Keypoint AP, AP50, AP75, APm, APl of the last evaluation of a training stage."""
    curve = read_eval_curve(output_dir)
    return {m: curve[-1][m] for m in METRICS} if curve else None


def _read_label_quality(output_dir: str) -> Optional[dict]:
    path = os.path.join(output_dir, LABEL_QUALITY_JSON)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def build_report(output_root: str, seeds, wall_times: Dict[str, float], eval_dataset: str) -> dict:
    """Collect every figure of a finished pipeline run.

    Args:
        output_root: DD.PIPELINE.OUTPUT_DIR.
        seeds: DD.PIPELINE.SEEDS.
        wall_times: stage name -> seconds (StageRunner.run's result).
        eval_dataset: the dataset models were evaluated on (for the captions).

    Returns:
        a JSON-serialisable dict.
    """
    per_seed = OrderedDict()
    for seed in seeds:
        root = os.path.join(output_root, f"seed{seed}")
        models = OrderedDict(
            (row, read_final_metrics(os.path.join(root, row)))
            for row in MODEL_ROWS
            if os.path.isdir(os.path.join(root, row))
        )
        labels = OrderedDict(
            (row, _read_label_quality(os.path.join(root, row)))
            for row in LABEL_ROWS
            if os.path.isdir(os.path.join(root, row))
        )
        per_seed[str(seed)] = {
            "models": models,
            "labels": labels,
            "teacher_curve": read_eval_curve(os.path.join(root, TEACHER)),
        }
    gains = [
        s["models"][STUDENT]["AP"] - s["models"][TEACHER]["AP"]
        for s in per_seed.values()
        if s["models"].get(STUDENT) and s["models"].get(TEACHER)
    ]
    summary = {
        "student_minus_teacher_AP": gains,
        "mean_gain": sum(gains) / len(gains) if gains else None,
        "min_gain": min(gains) if gains else None,
        "multiview_vs_singleview": _view_comparisons(per_seed),
    }
    return {
        "eval_dataset": eval_dataset,
        "seeds": [str(s) for s in seeds],
        "per_seed": per_seed,
        "summary": summary,
        "wall_time_s": wall_times,
    }


def _view_comparisons(per_seed) -> List[dict]:
    """Per seed with single-view labels: label AP and student AP (None without the single-view
    student), multi-view vs single-view."""
    comparisons = []
    for seed, data in per_seed.items():
        labels, models = data["labels"], data["models"]
        multi, single = labels.get(LABELS_MULTIVIEW), labels.get(LABELS_SINGLEVIEW)
        if not (multi and single):
            continue
        students = [models.get(STUDENT), models.get(STUDENT_SINGLEVIEW)]
        comparisons.append(
            {
                "seed": seed,
                "label_AP": [multi["keypoints"]["AP"], single["keypoints"]["AP"]],
                "student_AP": [m["AP"] for m in students] if all(students) else None,
            }
        )
    return comparisons


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def report_markdown(report: dict) -> str:
    lines = [f"# Data distillation report ({report['eval_dataset']})", ""]
    seeds = report["seeds"]
    lines += [
        f"Keypoint AP on {report['eval_dataset']} (COCO evaluator), seeds {', '.join(seeds)}.",
        "",
    ]
    lines += [
        "| seed | model | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---:|" * len(METRICS),
    ]
    for seed, data in report["per_seed"].items():
        for row, metrics in data["models"].items():
            values = [_fmt(metrics and metrics[m]) for m in METRICS]
            lines.append(f"| {seed} | {MODEL_ROWS[row]} | " + " | ".join(values) + " |")
    summary = report["summary"]
    if summary["student_minus_teacher_AP"]:
        lines += [
            "",
            "Student AP - teacher AP: "
            + ", ".join(f"{g:+.2f}" for g in summary["student_minus_teacher_AP"])
            + f" (mean {summary['mean_gain']:+.2f}, min {summary['min_gain']:+.2f})",
        ]
    for c in summary.get("multiview_vs_singleview", []):
        students = c["student_AP"]
        student_text = (
            f", student AP {_fmt(students[0])} vs {_fmt(students[1])}" if students else ""
        )
        lines += [
            "",
            f"Multi-view against single-view labels (seed {c['seed']}): label keypoint AP "
            f"{_fmt(c['label_AP'][0])} vs {_fmt(c['label_AP'][1])}{student_text}.",
        ]
    label_rows = [
        (seed, row, q) for seed, d in report["per_seed"].items() for row, q in d["labels"].items()
    ]
    if label_rows:
        lines += ["", "Label quality: AP of the generated labels against the true labels.", ""]
        lines += [
            "| seed | labels | keypoint AP | box AP | labels | images |",
            "|---|---|---:|---:|---:|---:|",
        ]
        for seed, row, q in label_rows:
            if q is None:
                lines.append(f"| {seed} | {LABEL_ROWS[row]} | - | - | - | - |")
            else:
                lines.append(
                    f"| {seed} | {LABEL_ROWS[row]} | {_fmt(q['keypoints']['AP'])} "
                    f"| {_fmt(q['bbox']['AP'])} "
                    f"| {q['labels']} | {q['images']} |"
                )
    for seed, data in report["per_seed"].items():
        curve = data["teacher_curve"]
        if len(curve) > 1:
            lines += ["", f"Teacher keypoint AP during training (seed {seed}): "]
            lines.append(", ".join(f"iter {c['iterations_done']}: {_fmt(c['AP'])}" for c in curve))
    lines += ["", "| stage | wall time (s) |", "|---|---:|"]
    lines += [f"| {name} | {t:.0f} |" for name, t in report["wall_time_s"].items()]
    total = sum(report["wall_time_s"].values())
    # Stages that ran side by side (DD.PIPELINE.PARALLEL_STAGES) overlap: this is CPU-side work.
    lines += [f"| sum of stages | {total:.0f} |", ""]
    return "\n".join(lines)


def _chart(report: dict, path: str) -> None:
    rows = [
        row for row in MODEL_ROWS if any(row in d["models"] for d in report["per_seed"].values())
    ]
    fig = new_figure((1.6 + 1.3 * len(rows), 3.6))
    ax = fig.add_subplot(1, 1, 1)
    for i, row in enumerate(rows):
        values = [
            d["models"][row]["AP"] for d in report["per_seed"].values() if d["models"].get(row)
        ]
        if values:
            ax.bar(i, sum(values) / len(values), color="#4c72b0" if row != TEACHER else "#999999")
            ax.scatter([i] * len(values), values, color="black", s=10, zorder=3)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([MODEL_ROWS[r].replace(" (", "\n(") for r in rows], fontsize=7)
    ax.set_ylabel(f"keypoint AP, {report['eval_dataset']}")
    ax.set_title("Data distillation: mean over seeds (dots: each seed)", fontsize=9)
    write_atomic(path, png_bytes(fig, dpi=120))


def write_report(report: dict, output_root: str) -> Dict[str, str]:
    """Write report.md, report.json and report.png into ``output_root``; return their paths."""
    paths = {ext: os.path.join(output_root, name) for ext, name in REPORT_FILES.items()}
    write_atomic(paths["md"], report_markdown(report))
    write_atomic(paths["json"], json.dumps(report, indent=1))
    _chart(report, paths["png"])
    return paths
