"""Rounds of distillation (DD.PIPELINE.ROUNDS): the plan, the resume of a finished round, the
report of every round and every head; stand-in stages only (no training)."""

import json
import sys
from pathlib import Path

import pytest

from dd_detectron.pipeline.plan import build_stages, load_stage_config
from dd_detectron.pipeline.stages import STAGE_RECORD, StageRunner

REPO = Path(__file__).resolve().parent.parent
TINY = REPO / "configs" / "Synthetic" / "quick_schedules" / "pipeline_tiny.yaml"
TOOLS = str(REPO / "tools")


def _cfg(out, **pipeline):
    cfg = load_stage_config(str(TINY))
    cfg.DD.PIPELINE.OUTPUT_DIR = str(out)
    for key, value in pipeline.items():
        cfg.DD.PIPELINE[key] = value
    return cfg


def _plan(out, **pipeline):
    return build_stages(_cfg(out, **pipeline), str(TINY.parent))


def _arg(stage, key):
    return stage.args[stage.args.index(key) + 1]


def test_round_two_labels_with_the_round_one_student(tmp_path):
    stages = {s.name: s for s in _plan(tmp_path, ROUNDS=3, ABLATIONS=("single_view", "finetune"))}
    assert list(stages) == [
        "seed1/teacher",
        "seed1/labels_multiview",
        "seed1/student",
        "seed1/round2_labels_multiview",
        "seed1/round2_student",
        "seed1/round3_labels_multiview",
        "seed1/round3_student",
        # Ablations: round 1 only.
        "seed1/labels_singleview",
        "seed1/student_singleview",
        "seed1/student_finetune",
    ]
    seed = tmp_path / "seed1"
    for r, teacher in ((2, "student"), (3, "round2_student")):
        labels, student = (
            stages[f"seed1/round{r}_labels_multiview"],
            stages[f"seed1/round{r}_student"],
        )
        # The teacher config's model and views, with the previous student's final weights.
        assert labels.tool == "annotate_net" and labels.depends_on == [f"seed1/{teacher}"]
        assert _arg(labels, "--config-file") == str(TINY.parent / "teacher_tiny.yaml")
        assert _arg(labels, "MODEL.WEIGHTS") == str(seed / teacher / "model_final.pth")
        assert _arg(labels, "TEST.AUG.ENABLED") == "True"
        assert _arg(labels, "DD.ANNOTATE.DATASETS") == "('synthetic_kp_tiny_unlabeled',)"
        assert _arg(labels, "--truth") == "synthetic_kp_tiny_unlabeled_truth"
        assert labels.output_dir == str(seed / f"round{r}_labels_multiview")
        # A new student from its usual init, on labeled + this round's labels.
        assert student.depends_on == [labels.name]
        assert _arg(student, "--config-file") == str(TINY.parent / "student_tiny.yaml")
        generated = str(seed / f"round{r}_labels_multiview" / "person_keypoints_generated.json")
        assert _arg(student, "DD.STUDENT.GENERATED_DATASETS") == repr((generated,))
        assert "DD.STUDENT.INIT" not in student.args and "MODEL.WEIGHTS" not in student.args
    # Round 1 is what a single-round pipeline runs, to the byte: its outputs stay valid.
    single = _plan(tmp_path, ABLATIONS=("single_view", "finetune"))
    for stage in single:
        assert stages[stage.name] == stage


def test_rounds_below_one_name_the_key(tmp_path):
    with pytest.raises(ValueError, match=r"DD\.PIPELINE\.ROUNDS must be >= 1, got 0"):
        _plan(tmp_path, ROUNDS=0)


class _InstantRunner(StageRunner):
    """Every stage a no-op child process: what is run, skipped and recorded is real."""

    def _command(self, stage, resume):
        return [sys.executable, "-c", "pass"]


def test_a_finished_round_is_skipped_when_rounds_grow(tmp_path):
    student = _student_config(tmp_path)
    first = _InstantRunner(_plan(tmp_path, ROUNDS=1, STUDENT_CONFIG=student), TOOLS)
    first.run()
    assert first.skipped == []
    records = {p: p.read_text() for p in tmp_path.rglob(STAGE_RECORD)}
    assert len(records) == 3

    second = _InstantRunner(_plan(tmp_path, ROUNDS=2, STUDENT_CONFIG=student), TOOLS)
    second.run()
    assert second.skipped == ["seed1/teacher", "seed1/labels_multiview", "seed1/student"]
    assert {p: p.read_text() for p in records} == records  # round 1 untouched
    assert (tmp_path / "seed1" / "round2_student" / STAGE_RECORD).exists()

    # Another round-1 student makes round 2 stale: its labels came from that student.
    _student_config(tmp_path, "SOLVER:", "  MAX_ITER: 7")
    third = _InstantRunner(_plan(tmp_path, ROUNDS=2, STUDENT_CONFIG=student), TOOLS)
    third.run()
    assert third.skipped == ["seed1/teacher", "seed1/labels_multiview"]
    fourth = _InstantRunner(_plan(tmp_path, ROUNDS=2, STUDENT_CONFIG=student), TOOLS)
    fourth.run()
    assert len(fourth.skipped) == 5


def _student_config(tmp_path, *lines):
    path = tmp_path / "student.yaml"
    path.write_text(f'_BASE_: "{TINY.parent / "student_tiny.yaml"}"\n' + "\n".join(lines) + "\n")
    return str(path)


def test_student_heads_and_rounds_model_are_checked(tmp_path):
    # A student head the teacher cannot label.
    masks = _student_config(tmp_path, "MODEL:", "  MASK_ON: True")
    with pytest.raises(ValueError, match=r"STUDENT_CONFIG asks for \['segm'\].*MODEL\.MASK_ON"):
        _plan(tmp_path, STUDENT_CONFIG=masks)
    # Another model: fine for one round, refused for several (its weights label the next round).
    wider = _student_config(tmp_path, "MODEL:", "  ROI_BOX_HEAD:", "    FC_DIM: 64")
    assert len(_plan(tmp_path, STUDENT_CONFIG=wider)) == 3
    with pytest.raises(ValueError, match=r"ROUNDS = 2: .* differs .* in MODEL\.ROI_BOX_HEAD"):
        _plan(tmp_path, STUDENT_CONFIG=wider, ROUNDS=2)
    # Other student weights (ImageNet, say) are not another model.
    weights = _student_config(tmp_path, "MODEL:", '  WEIGHTS: "elsewhere.pkl"')
    assert len(_plan(tmp_path, STUDENT_CONFIG=weights, ROUNDS=2)) == 5


# ------------------------------------------------------------------------------------------
# The report
# ------------------------------------------------------------------------------------------
def _fake_training(folder, **heads):
    """A training stage's metrics.json with a final evaluation of AP per head."""
    folder.mkdir(parents=True)
    line = {"iteration": 10}
    for iou_type, ap in heads.items():
        line.update({f"{iou_type}/{m}": ap + k for k, m in enumerate(("AP", "AP50", "AP75"))})
        line.update({f"{iou_type}/APm": ap, f"{iou_type}/APl": ap})
    (folder / "metrics.json").write_text(json.dumps({"iteration": 9, "total_loss": 1.0}) + "\n")
    with open(folder / "metrics.json", "a") as f:
        f.write(json.dumps(line) + "\n")


def _fake_labels(folder, **heads):
    folder.mkdir(parents=True)
    quality = {"images": 10, "labels": 12, **{t: {"AP": ap} for t, ap in heads.items()}}
    (folder / "label_quality.json").write_text(json.dumps(quality))


def test_report_of_two_rounds_of_a_mask_model(tmp_path):
    from dd_detectron.pipeline.report import build_report, report_markdown, write_report

    for seed, shift in ((1, 0.0), (2, 1.0)):
        root = tmp_path / f"seed{seed}"
        _fake_training(root / "teacher", bbox=10.0 + shift, segm=8.0 + shift)
        _fake_labels(root / "labels_multiview", bbox=12.0 + shift, segm=9.0 + shift)
        _fake_training(root / "student", bbox=13.0 + shift, segm=11.0 + shift)
        _fake_labels(root / "round2_labels_multiview", bbox=14.0 + shift, segm=12.5 + shift)
        _fake_training(root / "round2_student", bbox=14.5 + shift, segm=11.5 + shift)
    report = build_report(
        str(tmp_path), (1, 2), {"seed1/teacher": 5.0}, "val", ("bbox", "segm"), rounds=2
    )
    assert report["heads"] == ["bbox", "segm"] and report["rounds"] == 2
    seed1 = report["per_seed"]["1"]
    # The main tables: the mask head's AP.
    assert list(seed1["models"]) == ["teacher", "student", "round2_student"]
    assert seed1["models"]["round2_student"]["AP"] == 11.5
    assert seed1["model_heads"]["teacher"]["bbox"]["AP50"] == 11.0
    first, second = seed1["rounds"]
    assert (first["teacher"], first["labels"], first["student"]) == (
        "teacher",
        "labels_multiview",
        "student",
    )
    # Round 2's teacher is round 1's student.
    assert (second["teacher"], second["labels"], second["student"]) == (
        "student",
        "round2_labels_multiview",
        "round2_student",
    )
    assert second["AP"]["segm"] == {"teacher": 11.0, "labels": 12.5, "student": 11.5}
    assert second["AP"]["bbox"] == {"teacher": 13.0, "labels": 14.0, "student": 14.5}
    summary = report["summary"]
    assert summary["student_minus_teacher_AP"] == [3.0, 3.0]
    assert summary["round_gains"] == [
        {"round": 1, "student_minus_teacher_AP": [3.0, 3.0]},
        {"round": 2, "student_minus_teacher_AP": [0.5, 0.5]},
    ]

    text = report_markdown(report)
    assert "Mask AP on val (COCO evaluator), seeds 1, 2." in text
    assert "| 1 | student, round 2 (labeled + round-2 labels) | 11.50 |" in text
    assert "| 1 | 2 | mask | 11.00 | 12.50 | 11.50 | +0.50 |" in text
    assert "| 2 | 2 | box | 14.00 | 15.00 | 15.50 | +1.50 |" in text
    assert "| 1 | 1 | mask | 8.00 | 9.00 | 11.00 | +3.00 |" in text
    assert "| seed | labels | mask AP | box AP | labels | images |" in text
    assert (
        "| 1 | round-2 multi-view labels of the unlabeled split | 12.50 | 14.00 | 12 | 10 |" in text
    )
    paths = write_report(report, str(tmp_path))
    assert json.loads(Path(paths["json"]).read_text())["per_seed"]["2"]["rounds"][1]["AP"]["segm"][
        "student"
    ] == pytest.approx(12.5)
    from PIL import Image

    with Image.open(paths["png"]) as png:  # one panel per head, stacked
        assert png.size[1] > png.size[0] * 0.5


def test_keypoint_report_keeps_its_tables_and_adds_every_head(tmp_path):
    from dd_detectron.pipeline.report import build_report, report_markdown

    _fake_training(tmp_path / "seed1" / "teacher", bbox=20.0, keypoints=8.0)
    _fake_labels(tmp_path / "seed1" / "labels_multiview", bbox=18.0, keypoints=13.0)
    _fake_training(tmp_path / "seed1" / "student", bbox=22.0, keypoints=11.5)
    report = build_report(str(tmp_path), (1,), {}, "val")  # no heads given: a keypoint model
    assert report["per_seed"]["1"]["models"]["student"]["AP"] == 11.5
    text = report_markdown(report)
    assert "Keypoint AP on val (COCO evaluator), seeds 1." in text
    assert "| 1 | student (labeled + multi-view labels) | 11.50 | 12.50 | 13.50 |" in text
    assert "Student AP - teacher AP: +3.50 (mean +3.50, min +3.50)" in text
    assert "| seed | labels | keypoint AP | box AP | labels | images |" in text
    assert "| 1 | multi-view labels of the unlabeled split | 13.00 | 18.00 | 12 | 10 |" in text
    assert "| 1 | 1 | keypoint | 8.00 | 13.00 | 11.50 | +3.50 |" in text
    assert "| 1 | 1 | box | 20.00 | 18.00 | 22.00 | +2.00 |" in text
    assert "segm" not in json.dumps(report) and "| mask |" not in text


def test_the_chart_keeps_its_text_inside_and_says_where_bars_are_measured(tmp_path):
    import matplotlib.text

    from dd_detectron.pipeline.report import build_report, chart_figure

    root = tmp_path / "seed1"
    _fake_training(root / "teacher", keypoints=20.0)
    _fake_labels(root / "labels_multiview", keypoints=22.0)
    _fake_training(root / "student", keypoints=25.0)
    report = build_report(str(tmp_path), (1,), {}, "synthetic_kp_demo_val")
    fig = chart_figure(report)
    renderer = fig.canvas.get_renderer()
    frame = fig.bbox
    texts = [t for t in fig.findobj(matplotlib.text.Text) if t.get_visible() and t.get_text()]
    for text in texts:
        box = text.get_window_extent(renderer)
        inside = box.x0 >= frame.x0 - 1 and box.x1 <= frame.x1 + 1
        assert inside and box.y0 >= frame.y0 - 1 and box.y1 <= frame.y1 + 1, text.get_text()
    shown = " ".join(t.get_text().replace("\n", " ") for t in texts)
    assert "round 1 labels (vs truth)" in shown and "round 1 student (on eval)" in shown
    assert "models: AP on synthetic_kp_demo_val; labels: AP against the true labels" in shown
