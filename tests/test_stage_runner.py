"""The pipeline's stage scheduler on stand-in stages (short Python commands, no training):
dependency order, stages side by side, failure handling, the plan's ablation seeds."""

import json
import sys
from pathlib import Path

import pytest

from dd_detectron.pipeline.stages import STAGE_RECORD, Stage, StageRunner

REPO = Path(__file__).resolve().parent.parent
TOOLS = str(REPO / "tools")

# A stand-in tool. It marks that it started; if told to, waits (up to 300 s) for another stage's
# mark, which only appears if both run at once; then records its thread count and exits.
_SCRIPT = """
import json, os, sys, time
out, wait_for, code = sys.argv[1], sys.argv[2], int(sys.argv[3])
with open(os.path.join(out, "started"), "w") as f:
    f.write(repr(time.time()))
saw_it = wait_for == "-"
for _ in range(3000):
    if saw_it:
        break
    time.sleep(0.1)
    saw_it = os.path.exists(os.path.join(wait_for, "started"))
with open(os.path.join(out, "span.json"), "w") as f:
    threads = os.environ.get("OMP_NUM_THREADS")
    json.dump({"saw_other": saw_it, "end": time.time(), "threads": threads}, f)
sys.exit(code)
"""


class ScriptRunner(StageRunner):
    def _command(self, stage, resume):
        return [self.python, "-c", _SCRIPT, stage.output_dir, *stage.args]


def _stage(tmp_path, name, depends=(), wait_for=None, code=0):
    wait = str(tmp_path / wait_for) if wait_for else "-"
    return Stage(
        name, "train_net", [wait, str(code)], str(tmp_path / name), depends_on=list(depends)
    )


def _span(tmp_path, name):
    return json.loads((tmp_path / name / "span.json").read_text())


def _started(tmp_path, name):
    return float((tmp_path / name / "started").read_text())


def test_parallel_stages_overlap_and_respect_dependencies(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr("os.cpu_count", lambda: 2)
    stages = [
        _stage(tmp_path, "teacher", wait_for="oracle"),
        _stage(tmp_path, "labels", ["teacher"]),
        _stage(tmp_path, "oracle", wait_for="teacher"),
        _stage(tmp_path, "student", ["labels"]),
    ]
    wall = ScriptRunner(stages, TOOLS, python=sys.executable, parallel=2).run()
    assert set(wall) == {"teacher", "labels", "oracle", "student"}
    # The two independent stages ran at the same time: each saw the other start.
    assert _span(tmp_path, "teacher")["saw_other"] and _span(tmp_path, "oracle")["saw_other"]
    # No stage started before the stage it reads had finished.
    assert _started(tmp_path, "labels") >= _span(tmp_path, "teacher")["end"]
    assert _started(tmp_path, "student") >= _span(tmp_path, "labels")["end"]
    # Two stages on 2 cores: one thread each, and the record says so.
    assert {_span(tmp_path, n)["threads"] for n in ("teacher", "oracle")} == {"1"}
    record = json.loads((tmp_path / "teacher" / STAGE_RECORD).read_text())
    assert record["parallel_stages"] == 2 and record["omp_num_threads"] == "1"


def test_one_stage_at_a_time_by_default(tmp_path, monkeypatch):
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    stages = [_stage(tmp_path, "a"), _stage(tmp_path, "b", wait_for="a")]
    ScriptRunner(stages, TOOLS, python=sys.executable).run()
    assert _started(tmp_path, "b") >= _span(tmp_path, "a")["end"]
    assert _span(tmp_path, "a")["threads"] is None  # the tool's own default


def test_a_failed_stage_stops_the_others_and_names_itself(tmp_path):
    stages = [
        _stage(tmp_path, "slow", wait_for="never"),  # would wait 300 s, then write its span
        # Fails only once "slow" has started, whichever process gets the CPU first.
        _stage(tmp_path, "broken", wait_for="slow", code=3),
        _stage(tmp_path, "after"),
    ]
    with pytest.raises(RuntimeError, match=r"Stage broken failed \(exit 3\)"):
        ScriptRunner(stages, TOOLS, python=sys.executable, parallel=2).run()
    assert (tmp_path / "slow" / "started").exists()
    assert not (tmp_path / "slow" / "span.json").exists()  # terminated, not waited for
    assert not (tmp_path / "slow" / STAGE_RECORD).exists()  # so it reruns (resumes) next time
    assert not (tmp_path / "after").exists()  # and nothing new started after the failure


def test_runner_rejects_bad_order_and_parallelism(tmp_path):
    late = [_stage(tmp_path, "student", ["teacher"]), _stage(tmp_path, "teacher")]
    with pytest.raises(
        ValueError, match=r"student depends on \['teacher'\], which are not listed before it"
    ):
        StageRunner(late, TOOLS)
    with pytest.raises(ValueError, match="parallel must be >= 1, got 0"):
        StageRunner([_stage(tmp_path, "a")], TOOLS, parallel=0)


FULL = REPO / "configs" / "Synthetic" / "pipeline_nR18-FPN_full.yaml"


def _full_plan_cfg(**pipeline):
    """The demo-full pipeline config with DD.PIPELINE keys overridden."""
    from detectron2.config import get_cfg

    from dd_detectron import add_dd_config

    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(str(FULL))
    for key, value in pipeline.items():
        cfg.DD.PIPELINE[key] = value
    return cfg


def _full_plan(**pipeline):
    """Stage names of the demo-full pipeline config with DD.PIPELINE keys overridden."""
    from dd_detectron.pipeline.plan import build_stages

    return [s.name for s in build_stages(_full_plan_cfg(**pipeline), str(FULL.parent))]


def test_ablations_run_on_the_first_seed_unless_told(tmp_path, monkeypatch):
    # Stage configs are found relative to the pipeline config, wherever the run starts.
    monkeypatch.chdir(tmp_path)
    names = _full_plan()
    headline = ["teacher", "labels_multiview", "student"]
    ablations = [
        "labels_singleview",
        "student_singleview",
        "student_finetune",
        "labels_shifted",
        "student_shifted",
        "oracle",
    ]
    assert names == [f"seed1/{r}" for r in headline + ablations] + [
        f"seed{k}/{r}" for k in (2, 3) for r in headline
    ]
    names = _full_plan(ABLATION_SEEDS=(1, 3))
    assert "seed3/oracle" in names and "seed2/oracle" not in names and "seed1/oracle" in names
    with pytest.raises(
        ValueError,
        match=r"DD\.PIPELINE\.ABLATION_SEEDS: \[7\] not in DD\.PIPELINE\.SEEDS \(1, 2, 3\)",
    ):
        _full_plan(ABLATION_SEEDS=(7,))


def test_single_view_labels_ablation_labels_without_a_student(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    names = _full_plan(SEEDS=(1,), ABLATIONS=("single_view_labels",))
    assert names == [f"seed1/{r}" for r in ("teacher", "labels_multiview", "student")] + [
        "seed1/labels_singleview"
    ]
    names = _full_plan(SEEDS=(1,), ABLATIONS=("single_view", "single_view_labels"))
    assert names.count("seed1/labels_singleview") == 1 and "seed1/student_singleview" in names


DEMO = REPO / "configs" / "Synthetic" / "pipeline_nR18-FPN_demo.yaml"


def test_demo_plans_its_profile_single_view_labels_and_pictures(tmp_path, monkeypatch):
    from dd_detectron.pipeline.plan import build_stages, load_stage_config

    monkeypatch.chdir(tmp_path)
    cfg = load_stage_config(str(DEMO))
    stages = build_stages(cfg, str(DEMO.parent))
    assert [s.name for s in stages] == [
        "seed1/teacher",
        "seed1/labels_multiview",
        "seed1/student",
        "seed1/labels_singleview",  # label AP only: no second student
    ]
    teacher, multi, student, single = stages
    assert multi.work == 3.0 and single.work == 1.0  # 3 scales, no flips
    for stage, views in ((multi, "True"), (single, "False")):
        args = stage.args
        assert args[args.index("TEST.AUG.ENABLED") + 1] == views
        assert args[args.index("DD.ANNOTATE.DATASETS") + 1] == "('synthetic_kp_demo_unlabeled',)"
        assert args[args.index("--truth") + 1] == "synthetic_kp_demo_unlabeled_truth"
    for stage in (teacher, student):
        c = load_stage_config(stage.config_files[0])
        assert c.DATASETS.TRAIN == ("synthetic_kp_demo_labeled",)
        assert c.DATASETS.TEST == ("synthetic_kp_demo_val",)
        # The demo profile's colours tell left from right, which a flip would contradict.
        assert c.INPUT.RANDOM_FLIP == "none" and not c.TEST.AUG.FLIP
    assert cfg.DD.PIPELINE.LABEL_PICTURES > 0


def _fake_training(folder, *aps):
    """A training stage's metrics.json with one evaluation per AP value, as EvalHook logs them."""
    folder.mkdir(parents=True)
    lines = [{"iteration": 10 * i + 9, "total_loss": 1.0} for i in range(len(aps))]
    lines += [
        {
            "iteration": 10 * i + 9,
            **{
                f"keypoints/{m}": ap + k for k, m in enumerate(("AP", "AP50", "AP75", "APm", "APl"))
            },
        }
        for i, ap in enumerate(aps)
    ]
    # detectron2's final evaluation comes after the loop, logged at MAX_ITER (no training line).
    lines[-1]["iteration"] = 10 * len(aps)
    lines.sort(key=lambda line: line["iteration"])
    (folder / "metrics.json").write_text("\n".join(json.dumps(line) for line in lines) + "\n")


def _fake_labels(folder, ap):
    folder.mkdir(parents=True)
    quality = {"images": 10, "labels": 12, "keypoints": {"AP": ap}, "bbox": {"AP": ap + 5}}
    (folder / "label_quality.json").write_text(json.dumps(quality))


def test_report_gains_and_view_comparison(tmp_path):
    from dd_detectron.pipeline.report import build_report, report_markdown

    _fake_training(tmp_path / "seed1" / "teacher", 2.0, 8.0)
    _fake_training(tmp_path / "seed1" / "student", 5.0, 11.5)
    _fake_training(tmp_path / "seed1" / "student_singleview", 10.0)
    _fake_labels(tmp_path / "seed1" / "labels_multiview", 13.0)
    _fake_labels(tmp_path / "seed1" / "labels_singleview", 9.0)
    _fake_training(tmp_path / "seed2" / "teacher", 9.0)
    _fake_training(tmp_path / "seed2" / "student", 8.5)
    report = build_report(
        str(tmp_path), (1, 2), {"seed1/teacher": 60.0, "seed2/teacher": 30.0}, "val"
    )
    summary = report["summary"]
    # The last evaluation of each run counts: +3.5 and -0.5.
    assert summary["student_minus_teacher_AP"] == [3.5, -0.5]
    assert summary["mean_gain"] == 1.5 and summary["min_gain"] == -0.5
    assert summary["multiview_vs_singleview"] == [
        {"seed": "1", "label_AP": [13.0, 9.0], "student_AP": [11.5, 10.0]}
    ]
    curve = report["per_seed"]["1"]["teacher_curve"]
    assert [(c["iterations_done"], c["AP"]) for c in curve] == [(10, 2.0), (20, 8.0)]
    text = report_markdown(report)
    assert "Student AP - teacher AP: +3.50, -0.50 (mean +1.50, min -0.50)" in text
    assert "(seed 1): label keypoint AP 13.00 vs 9.00, student AP 11.50 vs 10.00." in text
    assert "| 1 | teacher (labeled only) | 8.00 | 9.00 | 10.00 | 11.00 | 12.00 |" in text
    assert "| sum of stages | 90 |" in text
    assert "Teacher keypoint AP during training (seed 1): \niter 10: 2.00, iter 20: 8.00" in text


def test_report_compares_single_view_labels_without_their_student(tmp_path):
    from dd_detectron.pipeline.report import build_report, report_markdown

    _fake_training(tmp_path / "seed1" / "teacher", 8.0)
    _fake_training(tmp_path / "seed1" / "student", 11.5)
    _fake_labels(tmp_path / "seed1" / "labels_multiview", 13.0)
    _fake_labels(tmp_path / "seed1" / "labels_singleview", 9.0)
    report = build_report(str(tmp_path), (1,), {}, "val")
    assert report["summary"]["multiview_vs_singleview"] == [
        {"seed": "1", "label_AP": [13.0, 9.0], "student_AP": None}
    ]
    assert "(seed 1): label keypoint AP 13.00 vs 9.00." in report_markdown(report)


def test_several_machines_run_one_annotation_job_with_one_fingerprint(monkeypatch):
    """With ANNOTATE_PROCESSES > 1 on 2 machines, each machine starts its node
    of ONE torchrun job (rendezvous at machine 0's --dist-url), not a job of its own."""
    from dd_detectron.pipeline.plan import build_stages

    cfg = _full_plan_cfg(ANNOTATE_PROCESSES=4, ABLATIONS=(), SEEDS=(1,), PARALLEL_STAGES=1)
    url = "tcp://10.1.2.3:29517"
    plans = [build_stages(cfg, str(FULL.parent), 8, 2, rank, url) for rank in (0, 1)]
    labels = [next(s for s in plan if s.tool == "annotate_net") for plan in plans]
    for rank, stage in enumerate(labels):
        assert stage.launcher == [
            "-m",
            "torch.distributed.run",
            "--nnodes=2",
            "--nproc_per_node=4",
            "--master_addr=10.1.2.3",
            "--master_port=29517",
        ]
        assert stage.node_args == [f"--node_rank={rank}"]
        command = StageRunner(plans[rank], TOOLS, machine_rank=rank)._command(stage, False)
        assert command.index(f"--node_rank={rank}") < command.index(f"{TOOLS}/annotate_net.py")
    # Both machines agree on what the stage is, so machine 0's record is valid on machine 1.
    fingerprints = []
    for plan in plans:
        runner = StageRunner(plan, TOOLS)
        for stage in plan:
            runner.fingerprints[stage.name] = runner.fingerprint(stage)
        fingerprints.append(runner.fingerprints)
    assert fingerprints[0] == fingerprints[1]
    with pytest.raises(ValueError, match=r"give --dist-url tcp://HOST:PORT"):
        build_stages(cfg, str(FULL.parent), 8, 2, 0, "auto")
    # One machine: a standalone job.
    one = next(s for s in build_stages(cfg, str(FULL.parent)) if s.tool == "annotate_net")
    assert one.launcher[2:] == ["--standalone", "--nproc_per_node=4"] and one.node_args == []


def test_stages_side_by_side_are_refused_on_gpus_and_machines(monkeypatch):
    """Two multi-process stages at once would share the --dist-url port."""
    from dd_detectron.pipeline.plan import build_stages

    cfg = _full_plan_cfg(PARALLEL_STAGES=2)
    for num_gpus, num_machines in ((2, 1), (1, 2)):
        refused = r"DD\.PIPELINE\.PARALLEL_STAGES = 2 .* Use DD\.PIPELINE\.PARALLEL_STAGES 1"
        with pytest.raises(ValueError, match=refused):
            build_stages(cfg, str(FULL.parent), num_gpus, num_machines, 0, "tcp://127.0.0.1:29500")
    assert build_stages(cfg, str(FULL.parent))  # on one CPU machine, side by side is fine


def test_only_machine_0_writes_stage_records_the_others_wait(tmp_path):
    """Machine 1 runs its part of the stage, writes no record, and goes on
    only once machine 0's record of that stage is there."""
    stages = [_stage(tmp_path, "teacher"), _stage(tmp_path, "student", ["teacher"])]
    runner = ScriptRunner(stages, TOOLS, python=sys.executable, machine_rank=1)
    looked = []

    def machine_0_writes(seconds):
        # Called only while machine 1 waits: machine 0 finishes the stage now.
        name = [s.name for s in stages if s.name not in looked][0]
        looked.append(name)
        stage = next(s for s in stages if s.name == name)
        record = {"fingerprint": runner.fingerprints[name], "wall_time_s": 1.0, "by": "machine 0"}
        (Path(stage.output_dir) / STAGE_RECORD).write_text(json.dumps(record))

    runner._sleep = machine_0_writes
    runner.run()
    assert looked == ["teacher", "student"]  # it waited for each record, in order
    for name in looked:
        assert json.loads((tmp_path / name / STAGE_RECORD).read_text())["by"] == "machine 0"
        assert (tmp_path / name / "pipeline_stage.machine1.log").exists()
        assert not (tmp_path / name / "pipeline_stage.log").exists()
