"""
The pipeline's report: AP of every head (box, mask, keypoints, as the model has them) of every
trained model on the evaluation set, the label AP of every set of generated labels, round by
round, per-stage wall time; as Markdown, JSON and a PNG chart.

Model AP is read from each training stage's metrics.json (the final evaluation detectron2's
EvalHook runs at the end of training); label AP from each annotation stage's label_quality.json.
The main tables give the AP of the model's most specific head (keypoints, else masks, else
boxes), as the paper's tables do; the per-round table gives every head.
"""

import json
import os
import re
import textwrap
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence

from ..annotation import LABEL_QUALITY_JSON
from ..utils import write_atomic
from ..utils.plotting import new_figure, png_bytes
from .plan import (
    LABELS_MULTIVIEW,
    LABELS_SHIFTED,
    LABELS_SINGLEVIEW,
    ORACLE,
    ROUND_PREFIX,
    STUDENT,
    STUDENT_FINETUNE,
    STUDENT_SHIFTED,
    STUDENT_SINGLEVIEW,
    TEACHER,
    round_row,
    round_rows,
)

__all__ = [
    "chart_figure",
    "METRICS",
    "REPORT_FILES",
    "HEAD_NAMES",
    "model_row_title",
    "label_row_title",
    "read_final_metrics",
    "read_final_head_metrics",
    "read_eval_curve",
    "build_report",
    "write_report",
]

METRICS = ("AP", "AP50", "AP75", "APm", "APl")
# COCO evaluation (detectron2's task name) -> the head's name in the report.
HEAD_NAMES = OrderedDict([("bbox", "box"), ("segm", "mask"), ("keypoints", "keypoint")])
# Without heads, a report is of a Keypoint R-CNN (the pipeline's first model).
KEYPOINT_IOU_TYPES = ("bbox", "keypoints")
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


def _model_rows(rounds: int) -> List[str]:
    """Model rows in report order: round 1's teacher and student, later rounds' students, then
    the ablations."""
    rows = [TEACHER, STUDENT] + [round_row(STUDENT, r) for r in range(2, rounds + 1)]
    return rows + [row for row in MODEL_ROWS if row not in rows]


def _label_rows(rounds: int) -> List[str]:
    rows = [LABELS_MULTIVIEW] + [round_row(LABELS_MULTIVIEW, r) for r in range(2, rounds + 1)]
    return rows + [row for row in LABEL_ROWS if row not in rows]


def _round_of(row: str, base: str) -> int:
    """r of a row ``round_row(base, r)``, r >= 2."""
    return int(re.fullmatch(rf"{ROUND_PREFIX}(\d+)_{base}", row).group(1))


def model_row_title(row: str) -> str:
    """The caption of a model row; a later round's student says its round."""
    if row in MODEL_ROWS:
        return MODEL_ROWS[row]
    r = _round_of(row, STUDENT)
    return f"student, round {r} (labeled + round-{r} labels)"


def label_row_title(row: str) -> str:
    if row in LABEL_ROWS:
        return LABEL_ROWS[row]
    return f"round-{_round_of(row, LABELS_MULTIVIEW)} multi-view labels of the unlabeled split"


def _metrics_lines(output_dir: str) -> List[dict]:
    path = os.path.join(output_dir, METRICS_JSON)
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]


def read_eval_curve(output_dir: str, iou_type: str = "keypoints") -> List[dict]:
    """Every evaluation of one head logged during training:
    [{"iteration": i, "iterations_done": n, "AP": ...}].

    An evaluation during training is logged at the step it follows (step i: i + 1 iterations
    done), detectron2's final one after the loop, at MAX_ITER (MAX_ITER done): only the former
    share their step with a training line.

    Args:
        output_dir: a training stage's OUTPUT_DIR.
        iou_type: the evaluation, "bbox", "segm" or "keypoints" (metrics.json's key prefix).
    """
    lines = _metrics_lines(output_dir)
    training_steps = {line.get("iteration") for line in lines if "total_loss" in line}
    curve = []
    for line in lines:
        if f"{iou_type}/AP" in line:
            step = line.get("iteration")
            curve.append(
                {
                    "iteration": step,
                    "iterations_done": step + 1 if step in training_steps else step,
                    **{m: line.get(f"{iou_type}/{m}") for m in METRICS},
                }
            )
    return curve


def read_final_metrics(output_dir: str, iou_type: str = "keypoints") -> Optional[Dict[str, float]]:
    """AP, AP50, AP75, APm, APl of one head in the last evaluation of a training stage."""
    curve = read_eval_curve(output_dir, iou_type)
    return {m: curve[-1][m] for m in METRICS} if curve else None


def read_final_head_metrics(
    output_dir: str, iou_types: Sequence[str]
) -> Dict[str, Optional[Dict[str, float]]]:
    """{iou type: its read_final_metrics} for every head of ``iou_types``."""
    return OrderedDict((t, read_final_metrics(output_dir, t)) for t in iou_types)


def _read_label_quality(output_dir: str) -> Optional[dict]:
    path = os.path.join(output_dir, LABEL_QUALITY_JSON)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return json.load(f)


def _ap(metrics: Optional[dict]) -> Optional[float]:
    return metrics["AP"] if metrics and metrics.get("AP") is not None else None


def _rounds(models_by_head: dict, labels: dict, rounds: int, iou_types) -> List[dict]:
    """Round by round: which rows are its teacher, labels and student, and their AP per head."""
    out = []
    for r in range(1, rounds + 1):
        rows = dict(zip(("teacher", "labels", "student"), round_rows(r)))
        ap = OrderedDict()
        for t in iou_types:
            ap[t] = {
                "teacher": _ap((models_by_head.get(rows["teacher"]) or {}).get(t)),
                "labels": _ap((labels.get(rows["labels"]) or {}).get(t)),
                "student": _ap((models_by_head.get(rows["student"]) or {}).get(t)),
            }
        out.append({"round": r, **rows, "AP": ap})
    return out


def build_report(
    output_root: str,
    seeds,
    wall_times: Dict[str, float],
    eval_dataset: str,
    iou_types: Sequence[str] = KEYPOINT_IOU_TYPES,
    rounds: int = 1,
) -> dict:
    """Collect every figure of a finished pipeline run.

    Args:
        output_root: DD.PIPELINE.OUTPUT_DIR.
        seeds: DD.PIPELINE.SEEDS.
        wall_times: stage name -> seconds (StageRunner.run's result).
        eval_dataset: the dataset models were evaluated on (for the captions).
        iou_types: the model's evaluations (``Heads.iou_types`` of the teacher config): "bbox",
            then "segm" and "keypoints" as it has those heads; the last is the main tables'.
        rounds: DD.PIPELINE.ROUNDS.

    Returns:
        a JSON-serialisable dict. Per seed: "models" (row -> the main head's AP, AP50, ...),
        "model_heads" (row -> head -> the same), "labels" (row -> label_quality.json),
        "rounds" (per round: its teacher, labels and student rows and their AP per head) and
        the teacher's curve.
    """
    iou_types = tuple(iou_types)
    main = iou_types[-1]
    per_seed = OrderedDict()
    for seed in seeds:
        root = os.path.join(output_root, f"seed{seed}")
        present = [r for r in _model_rows(rounds) if os.path.isdir(os.path.join(root, r))]
        models_by_head = OrderedDict(
            (row, read_final_head_metrics(os.path.join(root, row), iou_types)) for row in present
        )
        labels = OrderedDict(
            (row, _read_label_quality(os.path.join(root, row)))
            for row in _label_rows(rounds)
            if os.path.isdir(os.path.join(root, row))
        )
        per_seed[str(seed)] = {
            "models": OrderedDict((row, heads[main]) for row, heads in models_by_head.items()),
            "model_heads": models_by_head,
            "labels": labels,
            "rounds": _rounds(models_by_head, labels, rounds, iou_types),
            "teacher_curve": read_eval_curve(os.path.join(root, TEACHER), main),
        }
    gains = _gains(per_seed, 1, main)
    summary = {
        "student_minus_teacher_AP": gains,
        "mean_gain": sum(gains) / len(gains) if gains else None,
        "min_gain": min(gains) if gains else None,
        "multiview_vs_singleview": _view_comparisons(per_seed, main),
        # Per round: its student's AP - its teacher's (round r's teacher: round r - 1's student).
        "round_gains": [
            {"round": r, "student_minus_teacher_AP": _gains(per_seed, r, main)}
            for r in range(1, rounds + 1)
        ],
    }
    return {
        "eval_dataset": eval_dataset,
        "seeds": [str(s) for s in seeds],
        "heads": list(iou_types),
        "rounds": rounds,
        "per_seed": per_seed,
        "summary": summary,
        "wall_time_s": wall_times,
    }


def _gains(per_seed, round_index: int, iou_type: str) -> List[float]:
    gains = []
    for data in per_seed.values():
        ap = data["rounds"][round_index - 1]["AP"][iou_type]
        if ap["student"] is not None and ap["teacher"] is not None:
            gains.append(ap["student"] - ap["teacher"])
    return gains


def _view_comparisons(per_seed, iou_type: str) -> List[dict]:
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
                "label_AP": [multi[iou_type]["AP"], single[iou_type]["AP"]],
                "student_AP": [m["AP"] for m in students] if all(students) else None,
            }
        )
    return comparisons


def _fmt(x) -> str:
    return "-" if x is None else f"{x:.2f}"


def _heads_of(report: dict) -> List[str]:
    # Reports written before the per-head figures are of keypoint models.
    return report.get("heads") or list(KEYPOINT_IOU_TYPES)


def _round_lines(report: dict) -> List[str]:
    heads = _heads_of(report)
    lines = [
        "",
        "AP of every head, round by round (round r's teacher is round r - 1's student; labels: "
        "AP of the generated labels against the true labels).",
        "",
        "| seed | round | head | teacher | labels | student | student - teacher |",
        "|---|---:|---|---:|---:|---:|---:|",
    ]
    for seed, data in report["per_seed"].items():
        for entry in data.get("rounds", ()):
            for t in heads:
                ap = entry["AP"][t]
                gain = (
                    f"{ap['student'] - ap['teacher']:+.2f}"
                    if ap["student"] is not None and ap["teacher"] is not None
                    else "-"
                )
                lines.append(
                    f"| {seed} | {entry['round']} | {HEAD_NAMES[t]} | {_fmt(ap['teacher'])} "
                    f"| {_fmt(ap['labels'])} | {_fmt(ap['student'])} | {gain} |"
                )
    return lines


def report_markdown(report: dict) -> str:
    heads = _heads_of(report)
    main = HEAD_NAMES[heads[-1]]
    lines = [f"# Data distillation report ({report['eval_dataset']})", ""]
    seeds = report["seeds"]
    lines += [
        f"{main.capitalize()} AP on {report['eval_dataset']} (COCO evaluator), "
        f"seeds {', '.join(seeds)}.",
        "",
    ]
    lines += [
        "| seed | model | " + " | ".join(METRICS) + " |",
        "|---|---|" + "---:|" * len(METRICS),
    ]
    for seed, data in report["per_seed"].items():
        for row, metrics in data["models"].items():
            values = [_fmt(metrics and metrics[m]) for m in METRICS]
            lines.append(f"| {seed} | {model_row_title(row)} | " + " | ".join(values) + " |")
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
            f"Multi-view against single-view labels (seed {c['seed']}): label {main} AP "
            f"{_fmt(c['label_AP'][0])} vs {_fmt(c['label_AP'][1])}{student_text}.",
        ]
    lines += _round_lines(report)
    label_rows = [
        (seed, row, q) for seed, d in report["per_seed"].items() for row, q in d["labels"].items()
    ]
    if label_rows:
        # The main head first: keypoint AP, then box AP.
        columns = list(reversed(heads))
        lines += ["", "Label quality: AP of the generated labels against the true labels.", ""]
        lines += [
            "| seed | labels | "
            + " | ".join(f"{HEAD_NAMES[t]} AP" for t in columns)
            + " | labels | images |",
            "|---|---|" + "---:|" * (len(columns) + 2),
        ]
        for seed, row, q in label_rows:
            if q is None:
                values = ["-"] * (len(columns) + 2)
            else:
                values = [_fmt(_ap(q.get(t))) for t in columns] + [
                    str(q["labels"]),
                    str(q["images"]),
                ]
            lines.append(f"| {seed} | {label_row_title(row)} | " + " | ".join(values) + " |")
    for seed, data in report["per_seed"].items():
        curve = data["teacher_curve"]
        if len(curve) > 1:
            lines += ["", f"Teacher {main} AP during training (seed {seed}): "]
            lines.append(", ".join(f"iter {c['iterations_done']}: {_fmt(c['AP'])}" for c in curve))
    lines += ["", "| stage | wall time (s) |", "|---|---:|"]
    lines += [f"| {name} | {t:.0f} |" for name, t in report["wall_time_s"].items()]
    total = sum(report["wall_time_s"].values())
    # Stages that ran side by side (DD.PIPELINE.PARALLEL_STAGES) overlap: this is CPU-side work.
    lines += [f"| sum of stages | {total:.0f} |", ""]
    return "\n".join(lines)


# Bar colours of the chart: a round's teacher, its labels, its student; ablations.
_COLOURS = {"teacher": "#999999", "labels": "#dd8452", "student": "#4c72b0", "other": "#55a868"}


def _bars(report: dict, iou_type: str) -> List[tuple]:
    """(caption, colour, AP per seed) of the chart's bars for one head: every round's teacher,
    labels and student side by side, then the ablations' models."""
    per_seed = list(report["per_seed"].values())
    bars = []
    for r in range(1, report.get("rounds", 1) + 1):
        for part in ("teacher", "labels", "student"):
            values = []
            for d in per_seed:
                entries = d.get("rounds", ())
                if len(entries) >= r and entries[r - 1]["AP"][iou_type][part] is not None:
                    values.append(entries[r - 1]["AP"][iou_type][part])
            if values:
                where = "vs truth" if part == "labels" else "on eval"
                bars.append((f"round {r}\n{part}\n({where})", _COLOURS[part], values))
    in_rounds = {
        e[k] for d in per_seed for e in d.get("rounds", ()) for k in ("teacher", "student")
    }
    for row in MODEL_ROWS:
        if row in in_rounds:
            continue
        values = [
            _ap(d["model_heads"][row].get(iou_type))
            for d in per_seed
            if row in d.get("model_heads", {})
            and _ap(d["model_heads"][row].get(iou_type)) is not None
        ]
        if values:
            bars.append((MODEL_ROWS[row].replace(" (", "\n("), _COLOURS["other"], values))
    return bars


def chart_figure(report: dict):
    """The report's bar chart: one panel per head, every round's teacher, labels and student
    side by side, then the ablations' models; the mean over seeds, a dot per seed. The captions
    say where each bar is measured: models on the evaluation split, labels against the true
    labels of the unlabeled split."""
    heads = _heads_of(report)
    panels = [(t, _bars(report, t)) for t in reversed(heads)]
    width = max(len(bars) for _, bars in panels) if panels else 1
    fig_width = 1.6 + 0.9 * width
    fig = new_figure((fig_width, 3.2 * len(panels) + 0.4))
    # About 15 characters of 8-point text per inch: wrap the captions to the figure's width.
    columns = max(24, int(fig_width * 15))
    for index, (iou_type, bars) in enumerate(panels):
        ax = fig.add_subplot(len(panels), 1, index + 1)
        for i, (_, colour, values) in enumerate(bars):
            ax.bar(i, sum(values) / len(values), color=colour)
            ax.scatter([i] * len(values), values, color="black", s=10, zorder=3)
        ax.set_xticks(range(len(bars)))
        ax.set_xticklabels([caption for caption, _, _ in bars], fontsize=7)
        ax.set_ylabel(f"{HEAD_NAMES[iou_type]} AP", fontsize=8)
        if index == 0:
            ax.set_title(
                textwrap.fill(
                    "Data distillation, round by round: mean over seeds (dots: each seed)", columns
                ),
                fontsize=8,
            )
        if index == len(panels) - 1:
            ax.set_xlabel(
                textwrap.fill(
                    f"models: AP on {report['eval_dataset']}; labels: AP against the true labels "
                    "of the unlabeled split",
                    columns,
                ),
                fontsize=7,
            )
    fig.tight_layout()
    return fig


def _chart(report: dict, path: str) -> None:
    write_atomic(path, png_bytes(chart_figure(report), dpi=120))


def write_report(report: dict, output_root: str) -> Dict[str, str]:
    """Write report.md, report.json and report.png into ``output_root``; return their paths."""
    paths = {ext: os.path.join(output_root, name) for ext, name in REPORT_FILES.items()}
    write_atomic(paths["md"], report_markdown(report))
    write_atomic(paths["json"], json.dumps(report, indent=1))
    _chart(report, paths["png"])
    return paths
