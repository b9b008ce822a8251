"""Tests of the keypoint ensembler (dd_detectron/modeling/test_time_augmentation.py).

Random-weight tiny models on CPU: the properties tested (identity view = plain inference, flip
equivariance of the {identity, flip} ensemble) hold for any weights.
"""

import argparse
import os
import statistics

import numpy as np
import pytest
import torch
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
)
from support import FLIP_INDICES, H, W
from support import match_boxes as _match
from support import mirror_boxes as _mirror_boxes
from support import random_image
from support import run_ensembler as run
from support import tiny_model
from support import tta_cfg as tiny_cfg

from dd_detectron.modeling.test_time_augmentation import (
    HeatmapReducer,
    RCNNWithTTA,
    box_voting,
    unflip_keypoint_logits,
)


def test_identity_view_equals_plain_inference():
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    image = random_image()
    plain = run(model, image)
    ens = run(RCNNWithTTA(cfg, model), image)
    assert len(plain) == 5
    # Same computation on the same boxes: bit-identical.
    assert torch.equal(ens.pred_boxes.tensor, plain.pred_boxes.tensor)
    assert torch.equal(ens.scores, plain.scores)
    assert torch.equal(ens.pred_classes, plain.pred_classes)
    assert torch.equal(ens.pred_keypoints, plain.pred_keypoints)
    assert torch.equal(ens.pred_keypoint_heatmaps, plain.pred_keypoint_heatmaps)


@pytest.mark.parametrize(
    "seed,opts",
    [
        (0, ()),
        (
            1,
            (
                "DD.TTA.KEYPOINT_REDUCE",
                "max",
                "DD.TTA.BOX_VOTING",
                True,
                "DD.TTA.BOX_VOTING_IOU",
                0.5,
            ),
        ),
        (
            2,
            (
                "DD.TTA.CACHE_FEATURES",
                False,
                "DD.TTA.SCALE_SIZE_DEP",
                True,
                "DD.TTA.AREA_TH",
                1500.0,
            ),
        ),
    ],
)
def test_flip_equivariance_for_random_weights(seed, opts):
    """{identity, flip} on the mirrored image = the mirrored result, left/right swapped."""
    cfg = tiny_cfg("TEST.AUG.FLIP", True, *opts)
    ens = RCNNWithTTA(cfg, tiny_model(cfg, seed))
    image = random_image(seed)
    a = run(ens, image)
    b = run(ens, image.flip(-1))
    assert len(a) == len(b) == 5

    mirrored = _mirror_boxes(a.pred_boxes.tensor, W)
    order = _match(mirrored, b.pred_boxes.tensor)
    b = b[order]
    # Float tolerance: the two images run in swapped batch positions; an off-by-one flip
    # convention moves boxes by 1 px and keypoints by >= 1 heatmap pixel.
    torch.testing.assert_close(b.pred_boxes.tensor, mirrored, rtol=0, atol=1e-3)
    torch.testing.assert_close(b.scores, a.scores, rtol=1e-5, atol=1e-6)
    kb = b.pred_keypoints[:, FLIP_INDICES]
    ka = a.pred_keypoints
    torch.testing.assert_close(kb[..., 0], W - ka[..., 0], rtol=0, atol=1e-3)
    torch.testing.assert_close(kb[..., 1], ka[..., 1], rtol=0, atol=1e-3)
    torch.testing.assert_close(kb[..., 2], ka[..., 2], rtol=1e-4, atol=1e-6)


def test_flip_view_is_not_a_no_op():
    """The flip view changes the result (else the equivariance test would prove nothing)."""
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    image = random_image()
    one = run(RCNNWithTTA(cfg, model), image)
    cfg_flip = tiny_cfg("TEST.AUG.FLIP", True)
    two = run(RCNNWithTTA(cfg_flip, model), image)
    assert not torch.equal(one.pred_boxes.tensor, two.pred_boxes.tensor)


def test_unflip_reverses_width_and_swaps_channels():
    # 1 box, 3 keypoints (0 = nose, 1 = left, 2 = right), 1 x 3 heatmaps.
    logits = torch.tensor([[[[1.0, 2.0, 3.0]], [[4.0, 5.0, 6.0]], [[7.0, 8.0, 9.0]]]])
    out = unflip_keypoint_logits(logits, [0, 2, 1])
    expected = torch.tensor([[[[3.0, 2.0, 1.0]], [[9.0, 8.0, 7.0]], [[6.0, 5.0, 4.0]]]])
    assert torch.equal(out, expected)


def test_reduce_mean_and_max_by_hand():
    v1 = torch.tensor([[[[1.0, -2.0]]], [[[0.0, 4.0]]]])  # 2 boxes, 1 keypoint, 1 x 2
    v2 = torch.tensor([[[[3.0, -6.0]]], [[[2.0, 0.0]]]])
    v3 = torch.tensor([[[[-1.0, 5.0]]]])  # covers box 1 only
    mask3 = torch.tensor([False, True])

    mean = HeatmapReducer(2, "mean")
    for v, m in ((v1, None), (v2, None), (v3, mask3)):
        mean.add(v, m)
    expected_mean = torch.tensor([[[[2.0, -4.0]]], [[[1.0 / 3.0, 3.0]]]])
    torch.testing.assert_close(mean.result(), expected_mean, rtol=0, atol=1e-7)

    mx = HeatmapReducer(2, "max")
    for v, m in ((v1, None), (v2, None), (v3, mask3)):
        mx.add(v, m)
    assert torch.equal(mx.result(), torch.tensor([[[[3.0, -2.0]]], [[[2.0, 5.0]]]]))


def test_reduce_rejects_uncovered_box_and_bad_mode():
    r = HeatmapReducer(2, "mean")
    r.add(torch.zeros(1, 1, 2, 2), torch.tensor([True, False]))
    with pytest.raises(ValueError, match="no view"):
        r.result()
    with pytest.raises(ValueError, match="DD.TTA.KEYPOINT_REDUCE"):
        HeatmapReducer(1, "median")


def test_box_voting_by_hand():
    kept = torch.tensor([[0.0, 0.0, 10.0, 10.0]])
    pool = torch.tensor([[0.0, 0.0, 10.0, 10.0], [1.0, 1.0, 11.0, 11.0], [50.0, 50.0, 60.0, 60.0]])
    scores = torch.tensor([0.9, 0.3, 0.8])
    classes = torch.tensor([0, 0, 0])
    out = box_voting(kept, torch.tensor([0]), pool, scores, classes, 0.5)
    # IoU(box0, box1) = 81 / 119 >= 0.5; box 2 does not overlap.
    expected = (0.9 * pool[0] + 0.3 * pool[1]) / 1.2
    torch.testing.assert_close(out[0], expected, rtol=0, atol=1e-6)
    out = box_voting(kept, torch.tensor([0]), pool, scores, torch.tensor([0, 1, 0]), 0.5)
    assert torch.equal(out, kept)  # the other class does not vote


def test_recompute_equals_cache():
    opts = ("TEST.AUG.FLIP", True, "TEST.AUG.MIN_SIZES", (H, 128))
    model = tiny_model(tiny_cfg(*opts))
    image = random_image(3)
    cached = run(RCNNWithTTA(tiny_cfg(*opts), model), image)
    recomputed = run(RCNNWithTTA(tiny_cfg(*opts, "DD.TTA.CACHE_FEATURES", False), model), image)
    assert torch.equal(cached.pred_boxes.tensor, recomputed.pred_boxes.tensor)
    assert torch.equal(cached.pred_keypoints, recomputed.pred_keypoints)


def test_views_are_batched_by_size():
    cfg = tiny_cfg(
        "TEST.AUG.FLIP", True, "TEST.AUG.MIN_SIZES", (64, H, 128), "DD.TTA.VIEW_BATCH_SIZE", 2
    )
    ens = RCNNWithTTA(cfg, tiny_model(cfg))
    views, _ = ens._get_augmented_inputs({"image": random_image(), "height": H, "width": W})
    assert ens._view_batches(views) == [[0, 1], [2, 3], [4, 5]]
    calls = []
    ens.model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    run(ens, random_image())
    assert calls == [2, 2, 2]  # one backbone pass per view (pair), none for keypoints
    # Automatic batch size on CPU: one view at a time; the same results.
    auto = RCNNWithTTA(
        tiny_cfg("TEST.AUG.FLIP", True, "TEST.AUG.MIN_SIZES", (64, H, 128)), ens.model
    )
    assert auto.batch_size == 1
    calls.clear()
    one = run(auto, random_image())
    assert calls == [1] * 6
    two = run(ens, random_image())
    torch.testing.assert_close(one.pred_keypoints, two.pred_keypoints, rtol=1e-4, atol=1e-3)


def test_scale_size_dep_masks():
    cfg = tiny_cfg("DD.TTA.SCALE_SIZE_DEP", True, "DD.TTA.AREA_TH", 100.0)
    ens = RCNNWithTTA(cfg, tiny_model(cfg))
    from detectron2.structures import Boxes, Instances

    merged = Instances(
        (H, W), pred_boxes=Boxes(torch.tensor([[0.0, 0.0, 5.0, 5.0], [0.0, 0.0, 50.0, 50.0]]))
    )
    views = [{"image": torch.zeros(3, h, 10)} for h in (48, H, 192)]  # down, plain, up
    masks = ens._view_box_masks(views, merged, (H, W))
    # Small box (area 25): no down-scaled view; large box (2500): no up-scaled view.
    assert masks.tolist() == [[False, True], [True, True], [True, False]]
    only_down_up = [views[0], views[2]]
    masks = ens._view_box_masks(only_down_up, merged, (H, W))
    assert masks.tolist() == [[False, True], [True, False]]
    masks = ens._view_box_masks([views[0]], merged, (H, W))
    assert masks.tolist() == [[True, True]]  # the small box would have no view: keeps all


def test_no_detection_gives_empty_keypoints():
    cfg = tiny_cfg("MODEL.ROI_HEADS.SCORE_THRESH_TEST", 1.0, "TEST.AUG.FLIP", True)
    out = run(RCNNWithTTA(cfg, tiny_model(cfg)), random_image())
    assert len(out) == 0
    assert tuple(out.pred_keypoints.shape) == (0, 17, 3)


def test_clear_errors():
    cfg = tiny_cfg()
    model = tiny_model(cfg)
    with pytest.raises(ValueError, match="TEST.AUG.MIN_SIZES"):
        RCNNWithTTA(tiny_cfg("TEST.AUG.MIN_SIZES", ()), model)
    with pytest.raises(ValueError, match="DD.TTA.KEYPOINT_REDUCE"):
        RCNNWithTTA(tiny_cfg("DD.TTA.KEYPOINT_REDUCE", "median"), model)
    with pytest.raises(ValueError, match="DATASETS.TRAIN"):
        RCNNWithTTA(tiny_cfg("TEST.AUG.FLIP", True, "DATASETS.TRAIN", ("dd_test_no_meta",)), model)
    no_kp_cfg = tiny_cfg("MODEL.KEYPOINT_ON", False)
    no_kp_model = tiny_model(no_kp_cfg)
    with pytest.raises(ValueError, match="no keypoint head"):
        RCNNWithTTA(tiny_cfg(), no_kp_model)


def test_trainer_evaluates_with_tta(tmp_path):
    """DDTrainer.test_with_TTA (train_net's --eval-only ... TEST.AUG.ENABLED True path)."""
    import json
    import uuid

    import cv2
    from detectron2.data.datasets import register_coco_instances

    from dd_detectron.engine import DDTrainer

    rng = np.random.default_rng(0)
    images, anns = [], []
    for i in range(2):
        cv2.imwrite(str(tmp_path / f"{i}.jpg"), rng.integers(0, 256, (H, W, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": f"{i}.jpg", "height": H, "width": W})
        keypoints = [v for k in range(17) for v in (20.0 + k, 30.0 + k, 2)]
        anns.append(
            {
                "id": i + 1,
                "image_id": i + 1,
                "category_id": 1,
                "bbox": [10.0, 10.0, 50.0, 60.0],
                "area": 3000.0,
                "iscrowd": 0,
                "keypoints": keypoints,
                "num_keypoints": 17,
            }
        )
    json_file = tmp_path / "gt.json"
    json_file.write_text(
        json.dumps(
            {"images": images, "annotations": anns, "categories": [{"id": 1, "name": "person"}]}
        )
    )
    name = f"dd_test_tta_eval_{uuid.uuid4().hex[:8]}"
    meta = dict(
        keypoint_names=COCO_PERSON_KEYPOINT_NAMES, keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP
    )
    register_coco_instances(name, meta, str(json_file), str(tmp_path))
    cfg = tiny_cfg(
        "TEST.AUG.FLIP",
        True,
        "DATASETS.TEST",
        (name,),
        "OUTPUT_DIR",
        str(tmp_path / "out"),
        "DATALOADER.NUM_WORKERS",
        0,
    )
    results = DDTrainer.test_with_TTA(cfg, tiny_model(cfg))
    assert set(results) == {"bbox_TTA", "keypoints_TTA"}
    assert "AP" in results["keypoints_TTA"]
    assert os.path.exists(tmp_path / "out" / "inference_TTA" / name / "coco_instances_results.json")


def test_benchmark_tta_task_runs_every_approach(load_tool):
    benchmark = load_tool("benchmark")
    cfg = tiny_cfg("TEST.AUG.MIN_SIZES", (64, H), "TEST.AUG.FLIP", True)
    args = argparse.Namespace(rounds=2, num_iters=1, warmup=0, image_size=[H, W])
    result = benchmark.TASKS["tta"](cfg, args)
    approaches = result["approaches"]
    assert len(approaches) == 4 and result["views"] == 4
    # Random weights, score threshold 0: every approach that detects keeps the fixed number.
    for name, r in approaches.items():
        rates = r["images_per_s_per_round"]  # one per round, from the timed seconds
        assert len(rates) == args.rounds and min(rates) > 0
        assert r["images_per_s_median"] == pytest.approx(statistics.median(rates))
        assert min(rates) <= r["images_per_s_pooled"] <= max(rates)
        assert r["seconds_per_image"] == pytest.approx(1.0 / r["images_per_s_pooled"])
        if not name.startswith("backbone"):
            assert r["detections_per_image"] == 5
