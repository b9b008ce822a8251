"""The Mask R-CNN configs: the synthetic mask demo (configs/Synthetic/*mask*) and the COCO
detection setting (configs/COCO-InstanceSegmentation): what they train and label, and the stages
their pipeline configs plan."""

import json
import os
from pathlib import Path

import pytest

from dd_detectron.annotation import OUTPUT_JSON
from dd_detectron.config import num_views
from dd_detectron.pipeline.plan import build_stages, load_stage_config

REPO = Path(__file__).resolve().parent.parent
SYNTHETIC = REPO / "configs" / "Synthetic"
COCO_MASK = REPO / "configs" / "COCO-InstanceSegmentation"
COCO_KEYPOINTS = REPO / "configs" / "COCO-Keypoints"


def _arg(stage, key):
    return stage.args[stage.args.index(key) + 1]


def _plan(pipeline: Path, monkeypatch, cwd):
    monkeypatch.chdir(cwd)
    cfg = load_stage_config(str(pipeline))
    stages = build_stages(cfg, str(pipeline.parent))
    return cfg, {s.name: s for s in stages}


def test_synthetic_mask_demo_plans_teacher_labels_student_and_single_view_labels(
    tmp_path, monkeypatch
):
    pipeline = SYNTHETIC / "pipeline_mask_nR18-FPN_demo.yaml"
    cfg, stages = _plan(pipeline, monkeypatch, tmp_path)
    assert list(stages) == [
        "seed1/teacher",
        "seed1/labels_multiview",
        "seed1/student",
        "seed1/labels_singleview",  # label AP only: no second student
    ]
    teacher_file = str(SYNTHETIC / "teacher_mask_nR18-FPN_1800_demo-labeled.yaml")
    student_file = str(SYNTHETIC / "student_mask_nR18-FPN_1800_demo-labeled-generated.yaml")
    assert stages["seed1/teacher"].config_files == [teacher_file]
    assert stages["seed1/student"].config_files == [student_file]
    multi, single = stages["seed1/labels_multiview"], stages["seed1/labels_singleview"]
    assert multi.work == 3.0 and single.work == 1.0  # 3 scales, no flips
    for stage, views in ((multi, "True"), (single, "False")):
        assert _arg(stage, "--config-file") == teacher_file
        assert _arg(stage, "TEST.AUG.ENABLED") == views
        assert _arg(stage, "DD.ANNOTATE.DATASETS") == "('synthetic_kp_demo_unlabeled',)"
        assert _arg(stage, "--truth") == "synthetic_kp_demo_unlabeled_truth"  # has masks: segm AP
    # The student config's own GENERATED_DATASETS is where this pipeline writes the labels.
    generated = os.path.join(cfg.DD.PIPELINE.OUTPUT_DIR, "seed1", "labels_multiview", OUTPUT_JSON)
    assert _arg(stages["seed1/student"], "DD.STUDENT.GENERATED_DATASETS") == repr((generated,))
    assert load_stage_config(student_file).DD.STUDENT.GENERATED_DATASETS == (generated,)

    keypoint_teacher = load_stage_config(str(SYNTHETIC / "teacher_nR18-FPN_400_demo-labeled.yaml"))
    for path in (teacher_file, student_file):
        c = load_stage_config(path)
        assert c.MODEL.MASK_ON and not c.MODEL.KEYPOINT_ON and c.INPUT.MASK_FORMAT == "bitmask"
        assert c.MODEL.ROI_MASK_HEAD.POOLER_TYPE == "ROIAlignV2"  # the ensembler's mask flip
        assert c.DATASETS.TRAIN == ("synthetic_kp_demo_labeled",)
        assert c.DATASETS.TEST == ("synthetic_kp_demo_val",)
        assert c.INPUT.RANDOM_FLIP == "none" and not c.TEST.AUG.FLIP
        assert tuple(c.TEST.AUG.MIN_SIZES) == (128, 160, 192)
        # The keypoint demo's backbone, sizes and solver: only the head differs.
        for key in ("BACKBONE", "RESNETS", "FPN", "ANCHOR_GENERATOR", "RPN"):
            assert c.MODEL[key] == keypoint_teacher.MODEL[key], key
    teacher, student = load_stage_config(teacher_file), load_stage_config(student_file)
    # The keypoint demo's solver but its own schedule (each teacher runs to its plateau).
    for key in ("IMS_PER_BATCH", "BASE_LR", "WARMUP_ITERS"):
        assert teacher.SOLVER[key] == keypoint_teacher.SOLVER[key], key
    assert (
        student.SOLVER.MAX_ITER * student.SOLVER.IMS_PER_BATCH
        > teacher.SOLVER.MAX_ITER * teacher.SOLVER.IMS_PER_BATCH
    )


# The COCO detection setting, by file: as COCO-Keypoints' co115-un120 setting.
COCO_MASK_FILES = {
    "teacher": "teacher_R50-FPN_130k_co115.yaml",
    "annotate": "annotate_R50-FPN_130k_co115-un120.yaml",
    "student": "student_R50-FPN_360k_co115-un120.yaml",
    "pipeline": "pipeline_R50-FPN_co115-un120.yaml",
}


def test_coco_mask_folder_mirrors_the_keypoint_setting():
    on_disk = {p.name for p in COCO_MASK.glob("*.yaml")}
    assert on_disk == set(COCO_MASK_FILES.values())
    assert on_disk <= {p.name for p in COCO_KEYPOINTS.glob("*.yaml")}  # the same names


@pytest.mark.parametrize("role", ["teacher", "annotate", "student"])
def test_coco_mask_configs(role):
    cfg = load_stage_config(str(COCO_MASK / COCO_MASK_FILES[role]))
    keypoint = load_stage_config(str(COCO_KEYPOINTS / COCO_MASK_FILES[role]))
    assert cfg.MODEL.MASK_ON and not cfg.MODEL.KEYPOINT_ON
    assert cfg.MODEL.ROI_HEADS.NUM_CLASSES == 80
    assert cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone" and cfg.MODEL.RESNETS.DEPTH == 50
    assert cfg.DATASETS.TRAIN == ("coco_2017_train",) and cfg.DATASETS.TEST == ("coco_2017_val",)
    # The paper's 18 views, as the keypoint setting.
    assert num_views(cfg) == num_views(keypoint) == 18
    assert cfg.TEST.AUG.MIN_SIZES == keypoint.TEST.AUG.MIN_SIZES and cfg.TEST.AUG.FLIP
    # The keypoint setting's schedules: s1x teacher, 360k student, batch 16.
    for key in ("IMS_PER_BATCH", "BASE_LR", "MAX_ITER", "STEPS"):
        assert cfg.SOLVER[key] == keypoint.SOLVER[key], key
    if role == "annotate":
        assert cfg.TEST.AUG.ENABLED and cfg.DD.ANNOTATE.DATASETS == ("coco_2017_unlabeled",)
        teacher = load_stage_config(str(COCO_MASK / COCO_MASK_FILES["teacher"]))
        assert cfg.MODEL.WEIGHTS == os.path.join(teacher.OUTPUT_DIR, "model_final.pth")
    else:
        assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    if role == "student":
        assert cfg.INPUT.MASK_FORMAT == "bitmask"  # generated RLE with COCO's polygons
        assert cfg.DD.STUDENT.LABELED_FRACTION == 0.6 and cfg.DD.STUDENT.INIT == "weights"


def test_coco_mask_pipeline_plans_the_setting(tmp_path, monkeypatch):
    cfg, stages = _plan(COCO_MASK / COCO_MASK_FILES["pipeline"], monkeypatch, tmp_path)
    assert list(stages) == ["seed1/teacher", "seed1/labels_multiview", "seed1/student"]
    teacher_file = str(COCO_MASK / COCO_MASK_FILES["teacher"])
    assert stages["seed1/teacher"].config_files == [teacher_file]
    labels = stages["seed1/labels_multiview"]
    assert _arg(labels, "--config-file") == teacher_file and labels.work == 18.0
    assert _arg(labels, "TEST.AUG.ENABLED") == "True"
    assert _arg(labels, "DD.ANNOTATE.DATASETS") == "('coco_2017_unlabeled',)"
    assert "--truth" not in labels.args  # un-120 has no labels
    student = stages["seed1/student"]
    assert student.config_files == [str(COCO_MASK / COCO_MASK_FILES["student"])]
    generated = os.path.join(cfg.DD.PIPELINE.OUTPUT_DIR, "seed1", "labels_multiview", OUTPUT_JSON)
    assert _arg(student, "DD.STUDENT.GENERATED_DATASETS") == repr((generated,))
    student_cfg = load_stage_config(student.config_files[0])
    assert student_cfg.DD.STUDENT.GENERATED_DATASETS == (generated,)


def test_mask_demo_teacher_labels_train_its_student(tmp_path, monkeypatch):
    """The mask demo's chain without training: its teacher (random weights) labels two demo
    images in its three views, with label AP against their true masks; its student reads those
    labels by path and gets a mask loss from them."""
    import dataclasses

    import torch
    from detectron2.data import DatasetCatalog, DatasetMapper
    from detectron2.modeling import build_model
    from detectron2.utils.events import EventStorage

    from dd_detectron.annotation import annotate
    from dd_detectron.data.datasets import register_path_datasets, register_synthetic_keypoints
    from dd_detectron.data.synthetic import DEMO_SYNTHETIC_SPLITS

    monkeypatch.chdir(tmp_path)
    spec = dataclasses.replace(
        DEMO_SYNTHETIC_SPLITS[1], name="synthetic_kp_test_mask_chain", num_images=2
    )
    names = register_synthetic_keypoints(str(tmp_path / "data"), [spec])
    common = ["DATALOADER.NUM_WORKERS", 0, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 0.0]
    teacher_cfg = load_stage_config(
        str(SYNTHETIC / "teacher_mask_nR18-FPN_1800_demo-labeled.yaml"),
        common
        + ["TEST.AUG.ENABLED", True, "DD.ANNOTATE.DATASETS", (spec.name,)]
        + ["DD.ANNOTATE.SCORE_THRESH", "'0.0'"],
    )
    torch.manual_seed(0)
    teacher = build_model(teacher_cfg).eval()
    with torch.no_grad():  # spread the near-zero initial mask logits, so masks are not empty
        teacher.roi_heads.mask_head.predictor.weight.mul_(1000.0)
    out = tmp_path / "labels"
    results = annotate(teacher_cfg, teacher, str(out), truth=spec.name + "_truth")
    assert results["annotation"]["annotations"] > 0
    assert "segm" in results["label_quality"]
    labels = str(out / OUTPUT_JSON)
    with open(labels) as f:
        anns = json.load(f)["annotations"]
    assert anns and all(a["segmentation"]["counts"] for a in anns)

    student_cfg = load_stage_config(
        str(SYNTHETIC / "student_mask_nR18-FPN_1800_demo-labeled-generated.yaml"),
        common + ["DD.STUDENT.GENERATED_DATASETS", (labels,)],
    )
    names += register_path_datasets(student_cfg)
    records = DatasetCatalog.get(labels)
    batch = [DatasetMapper(student_cfg, is_train=True)(r) for r in records]
    student = build_model(student_cfg).train()
    with EventStorage():
        losses = student(batch)
    assert "loss_mask" in losses and all(torch.isfinite(v) for v in losses.values())
    for name in names:
        DatasetCatalog.remove(name)
