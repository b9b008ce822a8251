"""The pipeline with a Mask R-CNN: two rounds end to end on tiny
multi-category masked COCO data, the student's checks of its data against the model's heads,
the evaluator of every head.

Data from test_annotate_any_head's builder, written with absolute image paths so that the
stages (child processes) read them as datasets named by path; a tiny random-weight Mask R-CNN
(tests/tiny_keypoint_rcnn.py), a few iterations, one thread.
"""

import argparse
import json
import os
import re
import uuid
from pathlib import Path

import numpy as np
import pycocotools.mask as mask_util
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from support import CATEGORIES
from support import make_category_dataset as make_dataset
from support import tiny_rcnn_cfg

from dd_detectron.data import build_ratio_train_loader, register_generated
from dd_detectron.evaluation import build_coco_evaluator
from dd_detectron.pipeline.stages import STAGE_RECORD

REPO = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.usefixtures("one_thread")


def _by_path(root, n, seed, categories_per_image=None, masks=True, rle=False):
    """make_dataset's COCO file rewritten with absolute image paths (and RLE masks if ``rle``,
    as the annotation stage writes them): a dataset that is named by its path."""
    name = make_dataset(str(root), n, seed, categories_per_image, masks=masks)
    metadata = MetadataCatalog.get(name)
    with open(metadata.json_file) as f:
        coco = json.load(f)
    for image in coco["images"]:
        image["file_name"] = os.path.join(metadata.image_root, image["file_name"])
    if rle:
        sizes = {image["id"]: (image["height"], image["width"]) for image in coco["images"]}
        for ann in coco.get("annotations", ()):
            encoded = mask_util.merge(
                mask_util.frPyObjects(ann["segmentation"], *sizes[ann["image_id"]])
            )
            ann["segmentation"] = {"size": encoded["size"], "counts": encoded["counts"].decode()}
    path = str(root / "by_path.json")
    with open(path, "w") as f:
        json.dump(coco, f)
    return path


def _mask_cfg(labeled, *opts):
    return tiny_rcnn_cfg(
        True,
        len(CATEGORIES),
        "MODEL.WEIGHTS",
        "",
        "DATASETS.TRAIN",
        (labeled,),
        "DATALOADER.NUM_WORKERS",
        0,
        "INPUT.MIN_SIZE_TRAIN",
        (64,),
        "INPUT.MIN_SIZE_TEST",
        64,
        # The labels' masks are RLE: detectron2 trains them as bitmasks.
        "INPUT.MASK_FORMAT",
        "bitmask",
        "TEST.DETECTIONS_PER_IMAGE",
        4,
        *opts,
    )


# ------------------------------------------------------------------------------------------
# Two rounds end to end
# ------------------------------------------------------------------------------------------
def _pipeline_configs(tmp_path):
    data = tmp_path / "data"

    def relative(path):
        # detectron2's trainer writes a test set's predictions to OUTPUT_DIR/inference/<name>,
        # which an absolute path as name would replace.
        return os.path.relpath(path, tmp_path)

    labeled = relative(_by_path(data / "labeled", 4, 1, [[0, 0, 1], [0, 0], [0, 1, 2], [0]]))
    # The unlabeled images with their true labels (ignored when labeling, scored against).
    unlabeled = relative(_by_path(data / "unlabeled", 5, 2, [[0], [0, 1], [2], [0, 0], [1]]))
    val = relative(_by_path(data / "val", 3, 3, [[0, 1], [2], [0]]))
    teacher = _mask_cfg(
        labeled,
        "DATASETS.TEST",
        (val,),
        "SOLVER.IMS_PER_BATCH",
        2,
        "SOLVER.MAX_ITER",
        2,
        "SOLVER.BASE_LR",
        0.001,
        "SOLVER.STEPS",
        (),
        "SOLVER.WARMUP_ITERS",
        1,
        "SOLVER.CHECKPOINT_PERIOD",
        1000,
        "TEST.EVAL_PERIOD",
        0,
        "TEST.AUG.MIN_SIZES",
        (48, 64),
        "TEST.AUG.FLIP",
        True,
    )
    configs = tmp_path / "configs"
    configs.mkdir()
    (configs / "teacher.yaml").write_text(teacher.dump())
    (configs / "student.yaml").write_text(
        '_BASE_: "teacher.yaml"\nDD:\n  STUDENT:\n    LABELED_FRACTION: 0.5\n'
    )
    (configs / "pipeline.yaml").write_text(
        '_BASE_: "teacher.yaml"\n'
        "DD:\n"
        "  PIPELINE:\n"
        '    TEACHER_CONFIG: "teacher.yaml"\n'
        '    STUDENT_CONFIG: "student.yaml"\n'
        f'    UNLABELED_DATASET: "{unlabeled}"\n'
        f'    UNLABELED_TRUTH: "{unlabeled}"\n'
        f'    OUTPUT_DIR: "{tmp_path / "out"}"\n'
    )
    return str(configs / "pipeline.yaml")


def _args(config, *opts):
    return argparse.Namespace(
        config_file=config,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
        opts=list(opts),
    )


def _records(out):
    return {p: p.read_text() for p in out.rglob(STAGE_RECORD)}


@pytest.mark.slow
def test_mask_pipeline_two_rounds_end_to_end(tmp_path, load_tool, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the datasets' paths are relative to it
    config = _pipeline_configs(tmp_path)
    tool = load_tool("run_pipeline")
    out = tmp_path / "out"
    seed = out / "seed1"
    one = tool.main(_args(config))
    assert set(one["per_seed"]["1"]["models"]) == {"teacher", "student"}
    round_one = _records(out)
    assert len(round_one) == 3

    # One more round: round 1 is done and skipped, round 2 labels with round 1's student.
    two = tool.main(_args(config, "DD.PIPELINE.ROUNDS", "2"))
    assert _records(out).items() >= round_one.items()
    command = json.loads((seed / "round2_labels_multiview" / STAGE_RECORD).read_text())["command"]
    assert command[command.index("MODEL.WEIGHTS") + 1] == str(seed / "student" / "model_final.pth")
    labels = json.loads(
        (seed / "round2_labels_multiview" / "person_keypoints_generated.json").read_text()
    )
    assert labels["annotations"]
    assert all(isinstance(a["segmentation"], dict) for a in labels["annotations"])  # RLE
    assert [c["id"] for c in labels["categories"]] == [i for i, _ in CATEGORIES]
    # The round-2 student trained on labeled + round-2 labels, masks included.
    student_log = [
        json.loads(line)
        for line in (seed / "round2_student" / "metrics.json").read_text().splitlines()
    ]
    assert any(m.get("dd/generated_images") == 1 for m in student_log)
    assert any("loss_mask" in m for m in student_log)

    per_seed = two["per_seed"]["1"]
    assert two["heads"] == ["bbox", "segm"] and two["rounds"] == 2
    assert set(per_seed["models"]) == {"teacher", "student", "round2_student"}
    for row, heads in per_seed["model_heads"].items():
        assert set(heads) == {"bbox", "segm"}
        for metrics in heads.values():
            assert 0.0 <= metrics["AP"] <= 100.0
    for row in ("labels_multiview", "round2_labels_multiview"):
        quality = per_seed["labels"][row]
        assert quality["images"] == 5 and {"bbox", "segm"} <= set(quality)
    second = per_seed["rounds"][1]
    assert second["teacher"] == "student" and second["labels"] == "round2_labels_multiview"
    assert second["AP"]["segm"]["teacher"] == per_seed["models"]["student"]["AP"]
    text = (out / "report.md").read_text()
    assert "Mask AP on " in text and "| 1 | 2 | mask |" in text and "| 1 | 2 | box |" in text
    assert "student, round 2 (labeled + round-2 labels)" in text
    assert (out / "report.png").stat().st_size > 0

    # Nothing left to run: the same report.
    before = _records(out)
    again = tool.main(_args(config, "DD.PIPELINE.ROUNDS", "2"))
    assert _records(out) == before
    assert json.dumps(again["per_seed"], sort_keys=True) == json.dumps(
        two["per_seed"], sort_keys=True
    )


# ------------------------------------------------------------------------------------------
# The student's data against its heads
# ------------------------------------------------------------------------------------------
def _student(labeled, generated, *opts):
    cfg = _mask_cfg(
        labeled,
        "DD.STUDENT.GENERATED_DATASETS",
        (generated,),
        "SOLVER.IMS_PER_BATCH",
        2,
        "DD.STUDENT.LABELED_FRACTION",
        0.5,
        *opts,
    )
    for name in (labeled, generated):
        if name not in DatasetCatalog.list():
            register_generated(name, name)
    return cfg


def test_mask_student_trains_on_rle_labels_as_bitmasks(tmp_path):
    labeled = _by_path(tmp_path / "lab", 2, 1, [[0], [1, 2]])
    generated = _by_path(tmp_path / "gen", 2, 2, [[1], [0]], rle=True)
    batch = next(iter(build_ratio_train_loader(_student(labeled, generated), seed=0)))
    assert [x["dataset_source"] for x in batch] == ["labeled", "generated"]
    for x in batch:
        masks = x["instances"].gt_masks.tensor
        assert masks.shape[1:] == x["image"].shape[1:] and masks.any()


def test_clear_errors_for_data_the_heads_cannot_train_on(tmp_path):
    labeled = _by_path(tmp_path / "lab", 2, 1, [[0], [1, 2]])
    generated = _by_path(tmp_path / "gen", 2, 2, [[1], [0]], rle=True)
    no_masks = _by_path(tmp_path / "nomasks", 2, 3, [[0], [1]], masks=False)

    def fails(match, labeled, generated, *opts):
        with pytest.raises(ValueError, match=match):
            build_ratio_train_loader(_student(labeled, generated, *opts), seed=0)

    # RLE labels under detectron2's default polygon format.
    fails(
        r"RLE masks .* INPUT\.MASK_FORMAT \"bitmask\"; got 'polygon'",
        labeled,
        generated,
        "INPUT.MASK_FORMAT",
        "polygon",
    )
    # A mask model on a labeled set without masks: the key and the file.
    fails(
        rf"DATASETS\.TRAIN=.*{re.escape(no_masks)}\): an annotation .* no 'segmentation'.*"
        r"MODEL\.MASK_ON",
        no_masks,
        generated,
    )
    # ... or on the box labels of a teacher without mask head.
    fails(
        rf"GENERATED_DATASETS=.*{re.escape(no_masks)}\): an annotation .* no 'segmentation'",
        labeled,
        no_masks,
    )
    # A keypoint head asked of labels without keypoints.
    fails(
        r"GENERATED_DATASETS=.*has no 'keypoints'",
        labeled,
        generated,
        "MODEL.KEYPOINT_ON",
        True,
        "MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS",
        17,
        # The labeled images pass detectron2's keypoint filter; the generated ones are checked.
        "MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE",
        0,
    )
    # The same box labels train a box student.
    box = _student(labeled, no_masks, "MODEL.MASK_ON", False)
    assert len(next(iter(build_ratio_train_loader(box, seed=0)))) == 2


def test_a_mask_teacher_on_data_without_masks_is_refused_by_name(tmp_path):
    from dd_detectron.engine import DDTrainer

    labeled = _by_path(tmp_path / "lab", 2, 1, [[0], [1, 2]])
    no_masks = _by_path(tmp_path / "nomasks", 2, 3, [[0], [1]], masks=False)
    for name in (labeled, no_masks):
        register_generated(name, name)
    batch = next(iter(DDTrainer.build_train_loader(_mask_cfg(labeled, "SOLVER.IMS_PER_BATCH", 2))))
    assert all(x["instances"].gt_masks.tensor.any() for x in batch)
    with pytest.raises(ValueError, match=rf"DATASETS\.TRAIN=.*{re.escape(no_masks)}\).*MASK_ON"):
        DDTrainer.build_train_loader(_mask_cfg(no_masks))
    # A test set named by its path is evaluated into OUTPUT_DIR, not next to its file.
    cfg = _mask_cfg(labeled, "OUTPUT_DIR", str(tmp_path / "run"))
    evaluator = DDTrainer.build_evaluator(cfg, labeled)
    assert evaluator._output_dir.startswith(str(tmp_path / "run" / "inference") + os.sep)


def test_mask_pipeline_refuses_a_polygon_student_before_any_stage(tmp_path, monkeypatch):
    from dd_detectron.pipeline.plan import build_stages, load_stage_config

    monkeypatch.chdir(tmp_path)
    config = _pipeline_configs(tmp_path)
    student = Path(config).parent / "student.yaml"
    student.write_text(student.read_text() + "INPUT:\n  MASK_FORMAT: polygon\n")
    with pytest.raises(
        ValueError, match=r"STUDENT_CONFIG: a mask student .* INPUT\.MASK_FORMAT \"bitmask\""
    ):
        build_stages(load_stage_config(config), str(Path(config).parent))


def test_evaluator_evaluates_every_head_of_the_model(tmp_path):
    val = _by_path(tmp_path / "val", 2, 1, [[0], [1]])
    name = f"dd_test_eval_{uuid.uuid4().hex[:8]}"
    register_generated(name, val)
    for mask, keypoint, tasks in (
        (True, False, ("bbox", "segm")),
        (False, False, ("bbox",)),
        (True, True, ("bbox", "segm", "keypoints")),
    ):
        cfg = _mask_cfg(val, "MODEL.MASK_ON", mask, "MODEL.KEYPOINT_ON", keypoint)
        assert build_coco_evaluator(cfg, name)._tasks == tasks
    assert np.asarray(MetadataCatalog.get(name).thing_classes).tolist() == ["cat", "dog", "bird"]
