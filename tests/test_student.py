"""Student training: a few-iteration run on labeled + generated toy data, init rules, configs."""

import argparse
import json
import math
import os
from pathlib import Path

import pytest
import yaml
from detectron2.config import get_cfg
from support import register_toy_labeled, write_toy_keypoints

from dd_detectron import add_dd_config
from dd_detectron.data import register_path_datasets
from dd_detectron.engine import DDTrainer, apply_student_init

REPO = Path(__file__).resolve().parent.parent


def tiny_student_cfg(tmp_path):
    """A narrow R-18-FPN student on toy data: 3 iterations of 5 images (3 labeled + 2 generated)."""
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.MODEL.DEVICE = "cpu"
    cfg.MODEL.WEIGHTS = ""
    cfg.MODEL.KEYPOINT_ON = True
    cfg.MODEL.BACKBONE.NAME = "build_narrow_resnet_fpn_backbone"
    cfg.MODEL.BACKBONE.FREEZE_AT = 0
    cfg.MODEL.RESNETS.DEPTH = 18
    cfg.MODEL.RESNETS.NORM = "BN"
    cfg.MODEL.RESNETS.OUT_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.RESNETS.STEM_OUT_CHANNELS = 8
    cfg.MODEL.RESNETS.RES2_OUT_CHANNELS = 8
    cfg.MODEL.FPN.IN_FEATURES = ["res2", "res3", "res4", "res5"]
    cfg.MODEL.FPN.OUT_CHANNELS = 16
    cfg.MODEL.ANCHOR_GENERATOR.SIZES = [[8], [16], [32], [64], [128]]
    cfg.MODEL.RPN.IN_FEATURES = ["p2", "p3", "p4", "p5", "p6"]
    cfg.MODEL.RPN.POST_NMS_TOPK_TRAIN = 100
    cfg.MODEL.RPN.POST_NMS_TOPK_TEST = 50
    cfg.MODEL.ROI_HEADS.NAME = "StandardROIHeads"
    cfg.MODEL.ROI_HEADS.IN_FEATURES = ["p2", "p3", "p4", "p5"]
    cfg.MODEL.ROI_HEADS.NUM_CLASSES = 1
    cfg.MODEL.ROI_HEADS.BATCH_SIZE_PER_IMAGE = 32
    cfg.MODEL.ROI_HEADS.SCORE_THRESH_TEST = 0.0  # an untrained model must still predict something
    cfg.MODEL.ROI_BOX_HEAD.NAME = "FastRCNNConvFCHead"
    cfg.MODEL.ROI_BOX_HEAD.NUM_FC = 2
    cfg.MODEL.ROI_BOX_HEAD.FC_DIM = 32
    cfg.MODEL.ROI_BOX_HEAD.POOLER_RESOLUTION = 7
    cfg.MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS = (16, 16)
    cfg.MODEL.ROI_KEYPOINT_HEAD.MIN_KEYPOINTS_PER_IMAGE = 1
    cfg.INPUT.MIN_SIZE_TRAIN = (64, 80)
    cfg.INPUT.MAX_SIZE_TRAIN = 112
    cfg.INPUT.MIN_SIZE_TEST = 64
    cfg.INPUT.MAX_SIZE_TEST = 112
    cfg.DATASETS.TRAIN = (register_toy_labeled(str(tmp_path / "labeled"), 6, seed=1),)
    cfg.DATASETS.TEST = (register_toy_labeled(str(tmp_path / "val"), 3, seed=3),)
    # A path entry, like the annotation stage's output: registered as the tools' setup does.
    cfg.DD.STUDENT.GENERATED_DATASETS = (
        write_toy_keypoints(str(tmp_path / "generated"), 4, seed=2),
    )
    cfg.DD.STUDENT.LABELED_FRACTION = 0.6
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.SOLVER.IMS_PER_BATCH = 5
    cfg.SOLVER.BASE_LR = 0.001
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.STEPS = ()
    cfg.SOLVER.WARMUP_ITERS = 0
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    cfg.TEST.EVAL_PERIOD = 0
    cfg.TEST.DETECTIONS_PER_IMAGE = 10
    cfg.OUTPUT_DIR = str(tmp_path / "output")
    cfg.SEED = 0
    register_path_datasets(cfg)
    return cfg


def test_student_trains_logs_the_mix_and_evaluates(tmp_path):
    cfg = tiny_student_cfg(tmp_path)
    assert apply_student_init(cfg).startswith("Student init: MODEL.WEIGHTS = random initialisation")
    cfg.freeze()
    os.makedirs(cfg.OUTPUT_DIR)
    trainer = DDTrainer(cfg)
    trainer.resume_or_load(resume=False)
    trainer.train()
    results = DDTrainer.test(cfg, trainer.model)
    assert math.isfinite(results["keypoints"]["AP"]) and math.isfinite(results["bbox"]["AP"])
    with open(os.path.join(cfg.OUTPUT_DIR, "metrics.json")) as f:
        rows = [json.loads(line) for line in f if line.strip()]
    mix = [r for r in rows if "dd/labeled_images" in r]
    # detectron2 writes metrics every 20 iterations and at the last one: iteration 2 here.
    assert [r["iteration"] for r in mix] == [2]
    assert (mix[0]["dd/labeled_images"], mix[0]["dd/generated_images"]) == (3, 2)
    assert mix[0]["dd/labeled_fraction"] == pytest.approx(0.6)
    assert math.isfinite(mix[0]["loss_keypoint"])
    # Every iteration is in the storage, not only the written ones.
    history = trainer.storage.history("dd/generated_images").values()
    assert [(v, it) for v, it in history] == [(2, 0), (2, 1), (2, 2)]


# ------------------------------------------------------------------------------------------
# Where the student starts
# ------------------------------------------------------------------------------------------


def init_cfg(init="weights", weights="", teacher="", generated=("gen",)):
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.MODEL.WEIGHTS = weights
    cfg.DD.STUDENT.INIT = init
    cfg.DD.STUDENT.TEACHER_WEIGHTS = teacher
    cfg.DD.STUDENT.GENERATED_DATASETS = tuple(generated)
    return cfg


def test_student_starts_from_model_weights():
    cfg = init_cfg(weights="imagenet.pkl", teacher="teacher/model_final.pth")
    assert "MODEL.WEIGHTS = imagenet.pkl" in apply_student_init(cfg)
    assert cfg.MODEL.WEIGHTS == "imagenet.pkl"


def test_student_never_silently_starts_from_the_teacher(tmp_path):
    teacher = str(tmp_path / "teacher" / "model_final.pth")
    cfg = init_cfg(
        weights=str(tmp_path / "teacher" / ".." / "teacher" / "model_final.pth"), teacher=teacher
    )
    with pytest.raises(
        ValueError,
        match=r"MODEL\.WEIGHTS is the teacher checkpoint .* DD\.STUDENT\.INIT is 'weights'",
    ):
        apply_student_init(cfg)


def test_explicit_fine_tuning_from_the_teacher():
    cfg = init_cfg(init="teacher", weights="imagenet.pkl", teacher="teacher/model_final.pth")
    assert "fine-tuning from the teacher checkpoint teacher/model_final.pth" in apply_student_init(
        cfg
    )
    assert cfg.MODEL.WEIGHTS == "teacher/model_final.pth"


def test_teacher_init_without_teacher_weights():
    with pytest.raises(
        ValueError,
        match=r"DD\.STUDENT\.INIT is 'teacher' but DD\.STUDENT\.TEACHER_WEIGHTS is empty",
    ):
        apply_student_init(init_cfg(init="teacher"))


def test_unknown_init():
    with pytest.raises(
        ValueError,
        match=r"DD\.STUDENT\.INIT must be one of \('weights', 'teacher'\), got 'imagenet'",
    ):
        apply_student_init(init_cfg(init="imagenet"))


def test_not_a_student_is_left_alone():
    cfg = init_cfg(weights="w.pkl", generated=())
    assert apply_student_init(cfg) is None and cfg.MODEL.WEIGHTS == "w.pkl"


def test_train_net_setup_applies_teacher_init(tmp_path, load_tool):
    train_net = load_tool("train_net")
    args = argparse.Namespace(
        config_file=str(
            REPO / "configs" / "COCO-Keypoints" / "student_R50-FPN_360k_co115-un120.yaml"
        ),
        opts=[
            "DD.STUDENT.INIT",
            "teacher",
            "DD.STUDENT.TEACHER_WEIGHTS",
            "t.pth",
            "OUTPUT_DIR",
            str(tmp_path),
        ],
        eval_only=False,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="",
        resume=False,
    )
    cfg = train_net.setup(args)
    assert cfg.MODEL.WEIGHTS == "t.pth"
    with open(tmp_path / "config.yaml") as f:
        assert "t.pth" in f.read()
    # --eval-only evaluates MODEL.WEIGHTS as given, whatever DD.STUDENT.INIT says.
    args.eval_only = True
    args.opts += ["MODEL.WEIGHTS", "student.pth"]
    assert train_net.setup(args).MODEL.WEIGHTS == "student.pth"


# ------------------------------------------------------------------------------------------
# Student configs
# ------------------------------------------------------------------------------------------


def load_config(path):
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


STUDENT_CONFIGS = sorted((REPO / "configs").rglob("student_*.yaml"))
# The paper's keypoint teacher (Detectron's s1x): 130k iterations at batch 16.
COCO_TEACHER_MAX_ITER = 130000


def test_student_configs_exist():
    names = {p.name for p in STUDENT_CONFIGS}
    assert {"student_R50-FPN_360k_co115-un120.yaml", "student_R50-FPN_360k_co35-co80.yaml"} <= names
    assert any(p.parent.name == "Synthetic" for p in STUDENT_CONFIGS)


@pytest.mark.parametrize("path", STUDENT_CONFIGS, ids=lambda p: p.name)
def test_student_config(path):
    cfg = load_config(path)
    assert cfg.DD.STUDENT.GENERATED_DATASETS and cfg.DD.STUDENT.LABELED_FRACTION == 0.6
    assert cfg.DD.STUDENT.INIT == "weights"
    if path.parent.name == "COCO-Keypoints":
        assert cfg.MODEL.WEIGHTS == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
        assert cfg.MODEL.RESNETS.DEPTH == 50 and cfg.SOLVER.IMS_PER_BATCH == 16
        assert cfg.SOLVER.MAX_ITER > COCO_TEACHER_MAX_ITER
        assert max(cfg.SOLVER.STEPS) < cfg.SOLVER.MAX_ITER
    else:
        # Sees more images than the teacher it is paired with in its folder's pipeline configs.
        pipelines = [load_config(p).DD.PIPELINE for p in path.parent.glob("pipeline_*.yaml")]
        teachers = {p.TEACHER_CONFIG for p in pipelines if Path(p.STUDENT_CONFIG).name == path.name}
        # A student config that is only the _BASE_ of another student needs no pairing.
        bases = {yaml.safe_load(p.read_text()).get("_BASE_") for p in STUDENT_CONFIGS}
        if path.name in bases and not teachers:
            return
        assert teachers, f"no pipeline config in {path.parent} pairs {path.name} with a teacher"
        for teacher in teachers:
            teacher_cfg = load_config(path.parent / teacher)
            teacher_images = teacher_cfg.SOLVER.MAX_ITER * teacher_cfg.SOLVER.IMS_PER_BATCH
            assert cfg.SOLVER.MAX_ITER * cfg.SOLVER.IMS_PER_BATCH > teacher_images, teacher
