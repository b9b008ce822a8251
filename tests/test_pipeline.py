"""The whole pipeline on the tiny synthetic profile: stages chain, skip when done, resume."""

import argparse
import json
import os
import shutil
from pathlib import Path

import cv2
import pytest

from dd_detectron.pipeline.plan import build_stages
from dd_detectron.pipeline.stages import STAGE_RECORD

REPO = Path(__file__).resolve().parent.parent
TINY = str(REPO / "configs/Synthetic/quick_schedules/pipeline_tiny.yaml")


def _args(output_dir, *opts):
    return argparse.Namespace(
        config_file=TINY,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
        # Labels by 2 torchrun processes: the CPU path of a sharded annotation stage, end to end.
        opts=[
            "DD.PIPELINE.OUTPUT_DIR",
            str(output_dir),
            "DD.PIPELINE.ANNOTATE_PROCESSES",
            "2",
            "DD.PIPELINE.LABEL_PICTURES",
            "2",
            *opts,
        ],
    )


def _same(a, b) -> bool:
    """Equal figures; detectron2 reports an empty area range as NaN, and NaN != NaN in Python."""
    return json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory, load_tool):
    """One tiny pipeline run (teacher, multi-view labels, student), shared by the tests below."""
    out = tmp_path_factory.mktemp("pipeline")
    tool = load_tool("run_pipeline")
    report = tool.main(_args(out))
    return tool, out, report


@pytest.mark.slow
def test_every_stage_output_exists_and_feeds_the_next(finished_run):
    _, out, report = finished_run
    seed = out / "seed1"
    assert (seed / "teacher" / "model_final.pth").exists()
    labels = json.loads((seed / "labels_multiview" / "person_keypoints_generated.json").read_text())
    assert len(labels["images"]) == 24  # every tiny unlabeled image, kept instances or not
    assert labels["categories"][0]["keypoints"] and labels["categories"][0]["skeleton"]
    record = json.loads((seed / "labels_multiview" / STAGE_RECORD).read_text())
    assert record["command"][1:5] == [
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
    ]
    assert "2 processes" in (seed / "labels_multiview" / "log.txt").read_text()
    # The student was trained on those labels: its loader logged generated images.
    student_log = [
        json.loads(line) for line in (seed / "student" / "metrics.json").read_text().splitlines()
    ]
    assert any(m.get("dd/generated_images") == 2 for m in student_log)
    models = report["per_seed"]["1"]["models"]
    assert set(models) == {"teacher", "student"}
    for metrics in models.values():
        assert 0.0 <= metrics["AP"] <= 100.0
    assert set(report["per_seed"]["1"]["labels"]) == {"labels_multiview"}
    for ext in ("md", "json", "png"):
        assert (out / f"report.{ext}").stat().st_size > 0


def test_label_pictures_show_generated_beside_true_labels(finished_run):
    _, out, _ = finished_run
    pictures = sorted((out / "label_pictures").glob("labels_*.jpg"))
    assert len(pictures) == 2
    labels = json.loads(
        (out / "seed1" / "labels_multiview" / "person_keypoints_generated.json").read_text()
    )
    widths = {str(image["id"]): image["width"] for image in labels["images"]}
    for path in pictures:
        picture = cv2.imread(str(path))
        # Two drawings of the image at scale 2 (generated, then true labels), 8 px apart.
        assert picture.shape[1] == 2 * 2 * widths[path.stem[len("labels_") :]] + 8


def test_the_true_half_shows_only_what_the_labels_can_show(tmp_path, monkeypatch):
    """Keypoint-only labels are drawn beside true keypoints, not beside true masks too."""
    import numpy as np
    import pycocotools.mask as mask_util
    from detectron2.data import DatasetCatalog, MetadataCatalog
    from detectron2.utils.visualizer import Visualizer

    from dd_detectron.pipeline import pictures

    image = tmp_path / "a.jpg"
    cv2.imwrite(str(image), np.zeros((20, 30, 3), np.uint8))
    keypoints = [10.0, 10.0, 2.0] * 17
    rle = mask_util.encode(np.asfortranarray(np.ones((20, 30), np.uint8)))
    rle["counts"] = rle["counts"].decode("ascii")
    truth = {
        "file_name": str(image),
        "image_id": 1,
        "height": 20,
        "width": 30,
        "annotations": [
            {"bbox": [2, 2, 20, 15], "bbox_mode": 1, "category_id": 0, "keypoints": keypoints}
            | {"segmentation": rle}
        ],
    }
    name = "dd_test_pictures_truth"
    DatasetCatalog.register(name, lambda: [truth])
    MetadataCatalog.get(name).set(thing_classes=["person"])
    generated = tmp_path / "generated.json"
    generated.write_text(
        json.dumps(
            {
                "images": [{"id": 1, "file_name": str(image), "height": 20, "width": 30}],
                "annotations": [
                    {"id": 1, "image_id": 1, "category_id": 1, "bbox": [2, 2, 20, 15]}
                    | {"area": 300, "iscrowd": 0, "keypoints": keypoints, "num_keypoints": 17}
                ],
                "categories": [{"id": 1, "name": "person"}],
            }
        )
    )
    drawn = []
    real_draw = Visualizer.draw_dataset_dict
    monkeypatch.setattr(
        Visualizer, "draw_dataset_dict", lambda v, r: (drawn.append(r), real_draw(v, r))[1]
    )
    try:
        paths = pictures.draw_labels_beside_truth(str(generated), name, str(tmp_path / "p"), 1)
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
    assert len(paths) == 1 and os.path.getsize(paths[0]) > 0
    (generated_half,), (true_half,) = [r["annotations"] for r in drawn]
    assert "segmentation" not in generated_half and "segmentation" not in true_half
    assert true_half["keypoints"] == keypoints
    assert "segmentation" in truth["annotations"][0]  # the dataset's own record is untouched


def test_second_run_skips_finished_stages(finished_run, caplog):
    tool, out, first = finished_run
    records = {p: p.read_text() for p in out.rglob(STAGE_RECORD)}
    again = tool.main(_args(out))
    assert {p: p.read_text() for p in out.rglob(STAGE_RECORD)} == records  # nothing reran
    assert _same(again["per_seed"], first["per_seed"])
    assert again["wall_time_s"] == first["wall_time_s"]


@pytest.mark.slow
def test_run_killed_between_stages_resumes_to_the_same_report(finished_run):
    tool, out, first = finished_run
    seed = out / "seed1"
    teacher_record = (seed / "teacher" / STAGE_RECORD).read_text()
    labels = (seed / "labels_multiview" / "person_keypoints_generated.json").read_text()
    # As if the run had been killed after the teacher: the later stages never happened.
    for row in ("labels_multiview", "student"):
        shutil.rmtree(seed / row)
    for ext in ("md", "json", "png"):
        (out / f"report.{ext}").unlink()
    report = tool.main(_args(out))
    assert (seed / "teacher" / STAGE_RECORD).read_text() == teacher_record  # not retrained
    # Same teacher, deterministic CPU stages: the same labels and the same final figures.
    assert (seed / "labels_multiview" / "person_keypoints_generated.json").read_text() == labels
    assert _same(report["per_seed"], first["per_seed"])


def test_fingerprint_follows_configs_bases_and_inputs(tmp_path):
    from dd_detectron.pipeline.stages import Stage, StageRunner

    base = tmp_path / "base.yaml"
    leaf = tmp_path / "leaf.yaml"
    base.write_text("SOLVER:\n  MAX_ITER: 10\n")
    leaf.write_text('_BASE_: "base.yaml"\n')
    first = Stage(
        "a",
        "train_net",
        ["--config-file", str(leaf)],
        str(tmp_path / "a"),
        config_files=[str(leaf)],
    )
    second = Stage("b", "annotate_net", ["x"], str(tmp_path / "b"), depends_on=["a"])
    runner = StageRunner([first, second], str(REPO / "tools"))

    def fingerprints():
        runner.fingerprints["a"] = runner.fingerprint(first)
        return runner.fingerprints["a"], runner.fingerprint(second)

    a0, b0 = fingerprints()
    assert fingerprints() == (a0, b0)  # deterministic
    base.write_text("SOLVER:\n  MAX_ITER: 11\n")  # a change in the _BASE_ chain ...
    a1, b1 = fingerprints()
    assert a1 != a0 and b1 != b0  # ... reruns the stage and what consumes it


def test_bad_pipeline_config_names_the_key(tmp_path):
    from detectron2.config import get_cfg

    from dd_detectron import add_dd_config

    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(str(REPO / TINY))
    config_dir = str((REPO / TINY).parent)
    cfg.DD.PIPELINE.ANNOTATE_PROCESSES = -1
    with pytest.raises(ValueError, match=r"DD\.PIPELINE\.ANNOTATE_PROCESSES must be >= 0, got -1"):
        build_stages(cfg, config_dir)
    cfg.DD.PIPELINE.ANNOTATE_PROCESSES = 0
    cfg.DD.PIPELINE.ABLATIONS = ("nonsense",)
    with pytest.raises(ValueError, match=r"DD\.PIPELINE\.ABLATIONS: unknown \['nonsense'\]"):
        build_stages(cfg, config_dir)
    cfg.DD.PIPELINE.ABLATIONS = ()
    cfg.DD.PIPELINE.STUDENT_CONFIG = str(tmp_path / "missing.yaml")
    with pytest.raises(
        ValueError, match=r"DD\.PIPELINE\.STUDENT_CONFIG: config file .*missing\.yaml"
    ):
        build_stages(cfg, config_dir)
