"""Tests of the ensembler on every R-CNN head: box-only, mask, keypoint, mask + keypoint
(dd_detectron/modeling/test_time_augmentation.py, RCNNWithTTA).

Random-weight tiny models on CPU: identity view = plain inference, flip equivariance of the
{identity, flip} ensemble, and equality with detectron2's GeneralizedRCNNWithTTA where the two
apply the same rule hold for any weights.
"""

import argparse
import statistics

import pytest
import torch
from detectron2.modeling import GeneralizedRCNNWithTTA
from support import FLIP_INDICES, HEADS, H, W, heads_cfg, heads_model
from support import match_boxes as _match
from support import mirror_boxes as _mirror_boxes
from support import random_image
from support import run_ensembler as run

from dd_detectron.modeling import RCNNWithTTA
from dd_detectron.modeling.test_time_augmentation import MaskReducer


def _assert_same(a, b, fields):
    assert len(a) == len(b) > 0
    assert torch.equal(a.pred_boxes.tensor, b.pred_boxes.tensor)
    for field in fields:
        assert torch.equal(a.get(field), b.get(field)), field


def _in_box_fraction(instances):
    """The mean of the hard masks inside their boxes (not about 0 or 1 for a real test)."""
    total, inside = 0, 0
    for mask, box in zip(instances.pred_masks, instances.pred_boxes.tensor.round().int()):
        x0, y0, x1, y1 = box.tolist()
        total += (x1 - x0) * (y1 - y0)
        inside += int(mask[y0:y1, x0:x1].sum())
    return inside / total


@pytest.mark.parametrize("heads", list(HEADS))
def test_identity_view_equals_plain_inference(heads):
    cfg = heads_cfg(heads)
    model = heads_model(cfg)
    image = random_image()
    plain = run(model, image)
    ens = run(RCNNWithTTA(cfg, model), image)
    fields = ["scores", "pred_classes"]
    if cfg.MODEL.MASK_ON:
        fields.append("pred_masks")
        assert 0.02 < _in_box_fraction(plain) < 0.98
    if cfg.MODEL.KEYPOINT_ON:
        fields += ["pred_keypoints", "pred_keypoint_heatmaps"]
    assert set(ens.get_fields()) == set(plain.get_fields())
    # Same computation on the same boxes: bit-identical.
    _assert_same(ens, plain, fields)


@pytest.mark.parametrize(
    "heads,seed,opts",
    [
        ("mask", 0, ()),
        ("mask", 1, ("DD.TTA.MASK_REDUCE", "max_prob", "DD.TTA.BOX_VOTING", True)),
        ("mask", 2, ("DD.TTA.MASK_REDUCE", "mean_logit", "DD.TTA.CACHE_FEATURES", False)),
        ("mask_keypoint", 3, ("DD.TTA.SCALE_SIZE_DEP", True, "DD.TTA.AREA_TH", 1500.0)),
    ],
)
def test_mask_flip_equivariance_for_random_weights(heads, seed, opts):
    """{identity, flip} on the mirrored image = the mirrored result."""
    cfg = heads_cfg(heads, "TEST.AUG.FLIP", True, *opts)
    ens = RCNNWithTTA(cfg, heads_model(cfg, seed))
    image = random_image(seed)
    a = run(ens, image)
    b = run(ens, image.flip(-1))
    assert len(a) == len(b) == 5
    mirrored = _mirror_boxes(a.pred_boxes.tensor, W)
    b = b[_match(mirrored, b.pred_boxes.tensor)]
    torch.testing.assert_close(b.pred_boxes.tensor, mirrored, rtol=0, atol=1e-3)
    torch.testing.assert_close(b.scores, a.scores, rtol=1e-5, atol=1e-6)
    assert torch.equal(b.pred_classes, a.pred_classes)
    assert 0.02 < _in_box_fraction(a) < 0.98
    # The boxes agree to float rounding, so a mask pixel may only flip where its probability is
    # within rounding of 0.5; an off-by-one flip convention moves whole mask edges.
    differ = (b.pred_masks != a.pred_masks.flip(-1)).sum().item()
    assert differ <= 2, differ
    if cfg.MODEL.KEYPOINT_ON:
        kb, ka = b.pred_keypoints[:, FLIP_INDICES], a.pred_keypoints
        torch.testing.assert_close(kb[..., 0], W - ka[..., 0], rtol=0, atol=1e-3)
        torch.testing.assert_close(kb[..., 1], ka[..., 1], rtol=0, atol=1e-3)


def test_masks_equal_detectron2_tta_where_the_rules_coincide():
    """Same views, no box voting, mean of probabilities, one view per batch: detectron2's
    GeneralizedRCNNWithTTA (two backbone passes per view) gives the same results."""
    cfg = heads_cfg("mask", "TEST.AUG.MIN_SIZES", (64, H, 128), "TEST.AUG.FLIP", True)
    model = heads_model(cfg)
    for seed in (0, 1):
        image = random_image(seed)
        ours = run(RCNNWithTTA(cfg, model, batch_size=1), image)
        theirs = run(GeneralizedRCNNWithTTA(cfg, model, batch_size=1), image)
        _assert_same(ours, theirs, ["scores", "pred_classes", "pred_masks"])
    # The views change the masks (else the equality would prove little).
    single = run(RCNNWithTTA(heads_cfg("mask"), model), image)
    assert not torch.equal(single.pred_masks, ours.pred_masks[: len(single)])


def test_one_backbone_pass_per_view_for_all_heads():
    cfg = heads_cfg("mask_keypoint", "TEST.AUG.FLIP", True, "TEST.AUG.MIN_SIZES", (64, H))
    model = heads_model(cfg)
    calls = []
    model.backbone.register_forward_hook(lambda m, i, o: calls.append(i[0].shape[0]))
    cached = run(RCNNWithTTA(cfg, model), random_image())
    assert calls == [1] * 4
    # Recomputed features (DD.TTA.CACHE_FEATURES False): a second pass, the same results.
    calls.clear()
    cfg = heads_cfg("mask_keypoint", "TEST.AUG.FLIP", True, "TEST.AUG.MIN_SIZES", (64, H))
    cfg.DD.TTA.CACHE_FEATURES = False
    recomputed = run(RCNNWithTTA(cfg, model), random_image())
    assert calls == [1] * 8
    _assert_same(cached, recomputed, ["scores", "pred_masks", "pred_keypoints"])
    # Views of one size as one batch (DD.TTA.VIEW_BATCH_SIZE): two passes of two views.
    calls.clear()
    cfg.DD.TTA.CACHE_FEATURES = True
    cfg.DD.TTA.VIEW_BATCH_SIZE = 2
    batched = run(RCNNWithTTA(cfg, model), random_image())
    assert calls == [2, 2]
    assert (batched.pred_masks != cached.pred_masks).sum() <= 2


def test_heads_are_switched_back_on_after_a_failure():
    cfg = heads_cfg("mask_keypoint")
    model = heads_model(cfg)
    ens = RCNNWithTTA(cfg, model)

    def fail(*args):
        raise RuntimeError("out of memory")

    hook = model.roi_heads.box_predictor.register_forward_hook(fail)
    with pytest.raises(RuntimeError, match="out of memory"):
        run(ens, random_image())
    hook.remove()
    assert model.roi_heads.mask_on and model.roi_heads.keypoint_on


@pytest.mark.parametrize("heads", ["mask", "mask_keypoint"])
def test_no_detection_gives_empty_masks(heads):
    cfg = heads_cfg(heads, "MODEL.ROI_HEADS.SCORE_THRESH_TEST", 1.0, "TEST.AUG.FLIP", True)
    model = heads_model(cfg)
    plain = run(model, random_image())
    out = run(RCNNWithTTA(cfg, model), random_image())
    assert len(out) == len(plain) == 0
    assert out.pred_masks.shape == plain.pred_masks.shape == (0, H, W)


def test_mask_reduce_modes_by_hand():
    # 2 boxes of classes 1 and 0, 2 classes, 1 x 1 masks; view 2 covers box 0 only.
    v1 = torch.tensor([[[[0.0]], [[2.0]]], [[[-1.0]], [[5.0]]]])
    v2 = torch.tensor([[[[9.0]], [[-2.0]]]])
    only_first = torch.tensor([True, False])
    classes = torch.tensor([1, 0])
    expected = {
        "mean_prob": [(torch.sigmoid(torch.tensor(2.0)) + torch.sigmoid(torch.tensor(-2.0))) / 2],
        "max_prob": [torch.sigmoid(torch.tensor(2.0))],
        "mean_logit": [torch.sigmoid(torch.tensor(0.0))],
    }
    for mode, box0 in expected.items():
        reducer = MaskReducer(classes, mode)
        reducer.add(v1)
        reducer.add(v2, only_first)
        out = reducer.result()
        assert out.shape == (2, 1, 1, 1)
        torch.testing.assert_close(out[0, 0, 0, 0], box0[0], rtol=0, atol=1e-6)
        # Box 1 has one view: its class-0 probability, whatever the mode.
        torch.testing.assert_close(out[1, 0, 0, 0], torch.sigmoid(torch.tensor(-1.0)))


def test_clear_errors():
    cfg = heads_cfg("mask")
    model = heads_model(cfg)
    with pytest.raises(ValueError, match="DD.TTA.MASK_REDUCE"):
        RCNNWithTTA(heads_cfg("mask", "DD.TTA.MASK_REDUCE", "median"), model)
    box_model = heads_model(heads_cfg("box"))
    with pytest.raises(ValueError, match="MODEL.MASK_ON is True.*no mask head"):
        RCNNWithTTA(cfg, box_model)
    with pytest.raises(ValueError, match="MODEL.KEYPOINT_ON is True.*no keypoint head"):
        RCNNWithTTA(heads_cfg("keypoint"), box_model)
    model.roi_heads.mask_pooler = None  # as ROI heads built with an empty pooler type
    with pytest.raises(ValueError, match="MODEL.ROI_MASK_HEAD.POOLER_TYPE"):
        RCNNWithTTA(cfg, model)


def test_benchmark_tta_task_times_detectron2_tta_on_a_mask_model(load_tool):
    benchmark = load_tool("benchmark")
    cfg = heads_cfg("mask", "TEST.AUG.MIN_SIZES", (64, H), "TEST.AUG.FLIP", True)
    args = argparse.Namespace(rounds=1, num_iters=1, warmup=0, image_size=[H, W])
    result = benchmark.TASKS["tta"](cfg, args)
    approaches = result["approaches"]
    assert result["views"] == 4 and result["mask_on"]
    assert "detectron2 GeneralizedRCNNWithTTA (two backbone passes per view)" in approaches
    for name, r in approaches.items():
        rates = r["images_per_s_per_round"]  # one per round, from the timed seconds
        assert len(rates) == args.rounds and min(rates) > 0
        assert r["images_per_s_median"] == pytest.approx(statistics.median(rates))
        assert min(rates) <= r["images_per_s_pooled"] <= max(rates)
        assert r["seconds_per_image"] == pytest.approx(1.0 / r["images_per_s_pooled"])
        if not name.startswith("backbone"):
            assert r["detections_per_image"] == 5
