"""Tests of the instance masks of the embedded synthetic data: exact visible pixels, COCO RLE, the
keypoint data unchanged by them, old splits without masks redone, detectron2 reading them."""

import dataclasses
import hashlib
import json
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, DatasetMapper
from detectron2.data.datasets import load_coco_json
from detectron2.structures import BitMasks
from pycocotools import mask as mask_util

from dd_detectron.data.datasets import register_synthetic_keypoints
from dd_detectron.data.synthetic import splits as syn
from dd_detectron.data.synthetic.figure import Part, Pose, build_figure, sample_appearance
from dd_detectron.data.synthetic.render_config import RenderConfig
from dd_detectron.data.synthetic.scene import Distractor, encode_mask, render_scene

# A digest of the rendered pixels and of every annotation field but the mask, for the first 3
# images of every split of a profile. They must be the same with every numpy, OpenCV and Python
# the project supports. The demo profile's is also that of the generator before masks were added
# (masks are an addition), so every figure measured on it stays valid.
KEYPOINT_FIELDS = ("figure_index", "keypoints", "num_keypoints", "bbox", "area")
PINNED_DIGESTS = {
    "demo": "c258f61882d2cfc335f77841c56772bac5ed98ac39d31ab2409b492df54623f6",
    "default": "de1ee06a45c5374c7d96849c869e59f9ecc58834f9efdf787fc731353152b707",
}


def _decode(ann):
    return mask_util.decode(ann["segmentation"]).astype(bool)


def _figure(center=(100.0, 100.0), depth=-100.0):
    arm, leg = (60.0, 0.0, 0.0, 0.0), (8.0, 0.0, 0.0)
    pose = Pose(
        yaw=0.0,
        head_turn=0.0,
        lean_forward=0.0,
        lean_side=0.0,
        tilt=0.0,
        arms=(arm, arm),
        legs=(leg, leg),
    )
    appearance = sample_appearance(np.random.default_rng(0), RenderConfig())
    return build_figure(pose, appearance, 140.0, center, depth)


@pytest.mark.parametrize("profile", ["demo", "default"])
def test_pixels_and_keypoints_are_pinned_on_every_stack(profile):
    specs = syn.DEMO_SYNTHETIC_SPLITS if profile == "demo" else syn.SYNTHETIC_SPLITS
    h = hashlib.sha256()
    for spec in specs:
        for index in range(3):
            img, anns = syn.render_synthetic_image(spec, index)
            h.update(img.tobytes())
            h.update(json.dumps([{k: a[k] for k in KEYPOINT_FIELDS} for a in anns]).encode())
    assert h.hexdigest() == PINNED_DIGESTS[profile]


def test_mask_is_the_visible_silhouette():
    bg = np.full((200, 200, 3), 128, np.uint8)
    fig = _figure()
    _, (alone,) = render_scene(bg, [fig])
    full = _decode(alone)
    assert alone["segmentation"]["size"] == [200, 200]
    assert isinstance(alone["segmentation"]["counts"], str)
    assert full.sum() == alone["area"] == mask_util.area(alone["segmentation"])

    # A distractor in front removes its pixels from the mask; behind, it changes nothing.
    centre = fig.keypoints[0]
    disc = Part(0, "circle", centre[None], 8.0, (0, 0, 0), 0.0)
    _, (front,) = render_scene(bg, [fig], [Distractor([disc], depth=-1e6)])
    _, (behind,) = render_scene(bg, [fig], [Distractor([disc], depth=1e6)])
    hidden = full & ~_decode(front)
    assert hidden.any() and not (_decode(front) & ~full).any()
    assert _decode(front).sum() == front["area"]
    assert np.array_equal(_decode(behind), full)
    # Two people: the one in front keeps its whole silhouette, the one behind loses the overlap;
    # the masks never share a pixel.
    other = fig.translated(20.0, 0.0)
    other.depth = fig.depth - 1.0
    _, (back, fore) = render_scene(bg, [fig, other])
    _, (other_alone,) = render_scene(bg, [other])
    assert np.array_equal(_decode(fore), _decode(other_alone))
    assert np.array_equal(_decode(back), full & ~_decode(other_alone))
    assert not (_decode(back) & _decode(fore)).any()


def test_rle_round_trip():
    rng = np.random.default_rng(0)
    m = rng.random((13, 7)) < 0.4
    rle = encode_mask(m)
    assert rle["size"] == [13, 7] and isinstance(rle["counts"], str)
    assert np.array_equal(mask_util.decode(rle).astype(bool), m)
    json.dumps(rle)  # JSON-ready


def test_every_split_has_masks_inside_boxes(tmp_path):
    n = 0
    for spec in syn.SYNTHETIC_SPLITS + syn.DEMO_SYNTHETIC_SPLITS:
        files = syn.generate_split(dataclasses.replace(spec, num_images=4), str(tmp_path))
        data = json.loads(open(files.truth_json_file or files.json_file).read())
        sizes = {im["id"]: (im["height"], im["width"]) for im in data["images"]}
        union = {}
        for ann in data["annotations"]:
            n += 1
            m = _decode(ann)
            assert tuple(ann["segmentation"]["size"]) == sizes[ann["image_id"]]
            assert m.sum() == ann["area"] == mask_util.area(ann["segmentation"])
            x, y, w, h = ann["bbox"]
            ys, xs = np.nonzero(m)
            assert (
                x <= xs.min() and xs.max() + 1 <= x + w and y <= ys.min() and ys.max() + 1 <= y + h
            )
            seen = union.setdefault(ann["image_id"], np.zeros_like(m))
            assert not (seen & m).any()  # one owner per pixel
            seen |= m
    assert n > 20


def test_split_without_masks_is_regenerated(tmp_path, monkeypatch):
    root = str(tmp_path)
    spec = dataclasses.replace(syn.DEMO_SYNTHETIC_SPLITS[0], num_images=2)
    with monkeypatch.context() as m:
        m.setattr(syn, "GENERATOR_VERSION", "1")
        files = syn.ensure_split(spec, root)
        old = json.loads(open(files.json_file).read())
    for ann in old["annotations"]:  # as version 1 wrote it
        del ann["segmentation"]
    with open(files.json_file, "w") as f:
        json.dump(old, f)
    assert not syn.is_split_complete(spec, root)
    images = sorted(os.listdir(files.image_root))
    stamps = [os.stat(os.path.join(files.image_root, n)).st_mtime_ns for n in images]
    os.utime(os.path.join(files.image_root, images[0]), ns=(0, 0))  # would show a rewrite
    syn.ensure_split(spec, root)
    # Same images, so their files were not rewritten (an older run may be reading them).
    assert os.stat(os.path.join(files.image_root, images[0])).st_mtime_ns == 0
    assert [os.stat(os.path.join(files.image_root, n)).st_mtime_ns for n in images[1:]] == stamps[
        1:
    ]
    new = json.loads(open(files.json_file).read())
    assert new["info"]["version"] == syn.GENERATOR_VERSION != "1"
    assert all("segmentation" in a for a in new["annotations"])
    for ann in new["annotations"]:
        del ann["segmentation"]
    assert new["annotations"] == old["annotations"] and new["images"] == old["images"]


def _mapper(mask_on, dataset):
    cfg = get_cfg()
    cfg.DATASETS.TRAIN = (dataset,)  # the keypoint flip map's source
    cfg.MODEL.KEYPOINT_ON = not mask_on
    cfg.MODEL.MASK_ON = mask_on
    cfg.INPUT.MASK_FORMAT = "bitmask"
    cfg.INPUT.RANDOM_FLIP = "none"
    cfg.INPUT.MIN_SIZE_TRAIN = (160,)
    return DatasetMapper(cfg, is_train=True)


def test_detectron2_drops_masks_of_keypoint_models_and_reads_them_for_mask_models(
    tmp_path, clean_registry
):
    spec = dataclasses.replace(
        syn.DEMO_SYNTHETIC_SPLITS[0], name="synthetic_kp_test_masks", num_images=3
    )
    clean_registry.extend(register_synthetic_keypoints(str(tmp_path), [spec]))
    records = DatasetCatalog.get(spec.name)
    assert all(isinstance(a["segmentation"], dict) for r in records for a in r["annotations"])
    for r in records:
        keypoint = _mapper(False, spec.name)(dict(r))["instances"]
        assert not keypoint.has("gt_masks") and keypoint.has("gt_keypoints")
        masked = _mapper(True, spec.name)(dict(r))["instances"]
        assert isinstance(masked.gt_masks, BitMasks) and not masked.has("gt_keypoints")
        assert torch.equal(masked.gt_boxes.tensor, keypoint.gt_boxes.tensor)
        assert masked.gt_masks.tensor.shape[0] == len(r["annotations"])
    again = load_coco_json(syn.split_files(spec, str(tmp_path)).json_file, "", None)
    assert len(again) == 3


def test_true_masks_as_predictions_score_100_segm_ap(tmp_path, clean_registry):
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances

    spec = dataclasses.replace(syn.SYNTHETIC_SPLITS[2], name="synthetic_kp_test_segm", num_images=6)
    clean_registry.extend(register_synthetic_keypoints(str(tmp_path), [spec]))
    records = DatasetCatalog.get(spec.name)
    evaluator = COCOEvaluator(spec.name, tasks=("segm",), distributed=False, use_fast_impl=False)
    evaluator.reset()
    for r in records:
        anns = r["annotations"]
        inst = Instances((r["height"], r["width"]))
        boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
        inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
        inst.scores = torch.ones(len(anns))
        inst.pred_classes = torch.zeros(len(anns), dtype=torch.long)
        masks = [_decode(a) for a in anns]
        inst.pred_masks = torch.from_numpy(np.stack(masks)) if masks else torch.zeros(0, 1, 1)
        evaluator.process([{"image_id": r["image_id"]}], [{"instances": inst}])
    assert evaluator.evaluate()["segm"]["AP"] == pytest.approx(100.0)
