"""A few-iteration teacher run through tools/train_net.py: train, checkpoint, reload, keypoint
AP."""

import argparse
import dataclasses
import json
import math
from pathlib import Path

import pytest
import torch

from dd_detectron.data.datasets import register_synthetic_keypoints
from dd_detectron.data.synthetic import SYNTHETIC_SPLITS

REPO = Path(__file__).resolve().parent.parent
CONFIG = str(REPO / "configs" / "Synthetic" / "teacher_nR18-FPN_2k_labeled.yaml")


@pytest.fixture(scope="module")
def tiny_splits(tmp_path_factory):
    """Two tiny synthetic splits under test-only names, generated in a tmp root."""
    root = str(tmp_path_factory.mktemp("train_net_data"))
    by_name = {s.name: s for s in SYNTHETIC_SPLITS}
    specs = [
        dataclasses.replace(
            by_name["synthetic_kp_labeled"], name="test_train_net_labeled", num_images=6
        ),
        dataclasses.replace(by_name["synthetic_kp_val"], name="test_train_net_val", num_images=4),
    ]
    register_synthetic_keypoints(root=root, splits=specs)
    return [s.name for s in specs]


def _args(config, output_dir, *opts, eval_only=False, resume=False):
    return argparse.Namespace(
        config_file=config,
        eval_only=eval_only,
        resume=resume,
        num_gpus=1,
        num_machines=1,
        machine_rank=0,
        dist_url="auto",
        opts=[
            "DATASETS.TRAIN",
            "('test_train_net_labeled',)",
            "DATASETS.TEST",
            "('test_train_net_val',)",
            "OUTPUT_DIR",
            str(output_dir),
            "SOLVER.IMS_PER_BATCH",
            "2",
            "SOLVER.MAX_ITER",
            "3",
            "SOLVER.CHECKPOINT_PERIOD",
            "2",
            "SOLVER.WARMUP_ITERS",
            "1",
            "TEST.EVAL_PERIOD",
            "0",
            "DATALOADER.NUM_WORKERS",
            "0",
            # An untrained model scores below the default 0.05; keep every detection so that the
            # evaluator has predictions to match.
            "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
            "0.0",
            *opts,
        ],
    )


def _keypoint_metrics(results):
    assert set(results) >= {"bbox", "keypoints"}
    metrics = results["keypoints"]
    assert set(metrics) >= {"AP", "AP50", "AP75", "APm", "APl"}
    return metrics


@pytest.mark.slow
def test_teacher_trains_checkpoints_reloads_and_reports_keypoint_ap(
    tiny_splits, tmp_path, load_tool
):
    train_net = load_tool("train_net")
    torch.manual_seed(0)
    train_net.main(_args(CONFIG, tmp_path, "SEED", "7"))
    # The final evaluation of training (detectron2's EvalHook) is logged to metrics.json.
    logged = [json.loads(line) for line in (tmp_path / "metrics.json").read_text().splitlines()]
    final_ap = [m["keypoints/AP"] for m in logged if "keypoints/AP" in m]
    assert len(final_ap) == 1

    final = tmp_path / "model_final.pth"
    assert final.exists() and (tmp_path / "model_0000001.pth").exists()
    # Checkpoints load with torch.load's safe default (weights only).
    state = torch.load(final, map_location="cpu", weights_only=True)
    assert state["iteration"] == 2 and "model" in state

    results = train_net.main(
        _args(CONFIG, tmp_path / "eval", "MODEL.WEIGHTS", str(final), eval_only=True)
    )
    metrics = _keypoint_metrics(results)
    assert all(not math.isnan(metrics[k]) and 0.0 <= metrics[k] <= 100.0 for k in ("AP", "AP50"))
    # Reloaded weights give the same AP as the model at the end of training.
    assert metrics["AP"] == pytest.approx(final_ap[0], abs=1e-6)
