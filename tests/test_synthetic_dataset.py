"""Tests of the embedded synthetic person-keypoint dataset (generator, files, registration)."""

import dataclasses
import json
import os

import cv2
import numpy as np
import pytest
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    KEYPOINT_CONNECTION_RULES,
)
from pycocotools.coco import COCO

from dd_detectron.data.datasets import ensure_dataset_ready, register_synthetic_keypoints
from dd_detectron.data.synthetic import splits as syn
from dd_detectron.data.synthetic.figure import Part, Pose, build_figure, sample_appearance
from dd_detectron.data.synthetic.render_config import RenderConfig
from dd_detectron.data.synthetic.scene import Distractor, render_scene

KP = {name: i for i, name in enumerate(COCO_PERSON_KEYPOINT_NAMES)}
# Tiny versions of every default split: enough images to hit every case, fast to make.
TINY_SIZES = {
    "synthetic_kp_labeled": 16,
    "synthetic_kp_unlabeled": 5,
    "synthetic_kp_val": 6,
    "synthetic_kp_unlabeled_shifted": 8,
}


def _tiny_splits():
    return [dataclasses.replace(s, num_images=TINY_SIZES[s.name]) for s in syn.SYNTHETIC_SPLITS]


def _read(path):
    with open(path, "rb") as f:
        return json.load(f)


def _bytes(path):
    with open(path, "rb") as f:
        return f.read()


def _all_files(root):
    out = {}
    for d, _, names in os.walk(root):
        for n in names:
            p = os.path.join(d, n)
            out[os.path.relpath(p, root)] = _bytes(p)
    return out


@pytest.fixture(scope="module")
def tiny_root(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("synthetic"))
    for spec in _tiny_splits():
        syn.generate_split(spec, root)
    return root


def test_default_split_table():
    names = [s.name for s in syn.SYNTHETIC_SPLITS]
    assert names == [
        "synthetic_kp_labeled",
        "synthetic_kp_unlabeled",
        "synthetic_kp_val",
        "synthetic_kp_unlabeled_shifted",
    ]
    by_name = {s.name: s for s in syn.SYNTHETIC_SPLITS}
    assert len({s.seed for s in syn.SYNTHETIC_SPLITS}) == len(names)
    labeled, unlabeled = by_name["synthetic_kp_labeled"], by_name["synthetic_kp_unlabeled"]
    assert unlabeled.num_images >= 10 * labeled.num_images
    assert not by_name["synthetic_kp_unlabeled"].with_annotations
    assert not by_name["synthetic_kp_unlabeled_shifted"].with_annotations
    assert labeled.with_annotations and by_name["synthetic_kp_val"].with_annotations
    shifted = by_name["synthetic_kp_unlabeled_shifted"].render
    assert shifted.background != by_name["synthetic_kp_unlabeled"].render.background
    assert shifted.person_height_mix != by_name["synthetic_kp_unlabeled"].render.person_height_mix


def test_generation_is_byte_identical(tmp_path):
    specs = [dataclasses.replace(s, num_images=3) for s in syn.SYNTHETIC_SPLITS[:2]]
    for d in ("a", "b"):
        for spec in specs:
            syn.generate_split(spec, str(tmp_path / d))
    a, b = _all_files(str(tmp_path / "a")), _all_files(str(tmp_path / "b"))
    assert sorted(a) == sorted(b)
    assert len(a) == 3 + 3 + 3  # 6 images, labeled json, unlabeled json + truth
    for rel in a:
        assert a[rel] == b[rel], rel
    # A different seed gives a different image (the comparison above can fail).
    other = dataclasses.replace(specs[0], seed=specs[0].seed + 1)
    img0, _ = syn.render_synthetic_image(specs[0], 0)
    img1, _ = syn.render_synthetic_image(other, 0)
    assert img0.shape != img1.shape or not np.array_equal(img0, img1)


def test_demo_splits_are_deterministic_valid_coco_of_their_own(tmp_path):
    specs = syn.DEMO_SYNTHETIC_SPLITS
    assert [s.name for s in specs] == [
        "synthetic_kp_demo_labeled",
        "synthetic_kp_demo_unlabeled",
        "synthetic_kp_demo_val",
    ]
    assert all(s.render == syn.DEMO_RENDER for s in specs)
    others = syn.SYNTHETIC_SPLITS + syn.TINY_SYNTHETIC_SPLITS
    assert len({s.seed for s in specs + others}) == len(specs + others)  # no image shared
    labeled, unlabeled, val = specs
    assert unlabeled.num_images >= 5 * labeled.num_images and not unlabeled.with_annotations
    tiny = [dataclasses.replace(s, num_images=4) for s in specs]
    for d in ("a", "b"):
        for spec in tiny:
            syn.generate_split(spec, str(tmp_path / d))
    a, b = _all_files(str(tmp_path / "a")), _all_files(str(tmp_path / "b"))
    assert sorted(a) == sorted(b) and len(a) == 3 * 4 + 4  # 12 images, 3 JSON + 1 truth
    for rel in a:
        assert a[rel] == b[rel], rel
    people = 0
    for spec in tiny:
        files = syn.split_files(spec, str(tmp_path / "a"))
        coco = COCO(files.json_file if spec.with_annotations else files.truth_json_file)
        assert sorted(coco.getImgIds()) == [1, 2, 3, 4]
        for img in coco.loadImgs(coco.getImgIds()):
            assert 128 <= img["width"] <= 160 and 128 <= img["height"] <= 160
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[img["id"]]))
            assert 1 <= len(anns) <= 2  # one or two people, none out of sight
            people += sum(ann["num_keypoints"] > 0 for ann in anns)
    assert people >= 12  # large people: all but the most hidden carry keypoints


def test_every_split_loads(tiny_root):
    for spec in _tiny_splits():
        files = syn.split_files(spec, tiny_root)
        jsons = [files.json_file] + ([files.truth_json_file] if files.truth_json_file else [])
        for json_file in jsons:
            coco = COCO(json_file)
            assert sorted(coco.getImgIds()) == list(range(1, spec.num_images + 1))
            assert coco.loadCats([1])[0]["name"] == "person"
            records = load_coco_json(json_file, files.image_root)
            assert len(records) == spec.num_images
            for r in records:
                img = cv2.imread(r["file_name"])
                assert img is not None and img.shape == (r["height"], r["width"], 3)
                lo_w, hi_w = spec.render.width_range
                lo_h, hi_h = spec.render.height_range
                assert lo_w <= r["width"] <= hi_w and lo_h <= r["height"] <= hi_h
                for obj in r["annotations"]:
                    # detectron2 adds 0.5: loaded keypoints are continuous coordinates.
                    k = np.asarray(obj["keypoints"]).reshape(-1, 3)
                    vis = k[:, 2] > 0
                    assert np.all(k[vis, 0] >= 0.5) and np.all(k[vis, 0] <= r["width"] - 0.5)
                    assert np.all(k[vis, 1] >= 0.5) and np.all(k[vis, 1] <= r["height"] - 0.5)


def _annotated_jsons(root):
    for spec in _tiny_splits():
        files = syn.split_files(spec, root)
        yield files.json_file if spec.with_annotations else files.truth_json_file


def test_annotation_invariants(tiny_root):
    counts = np.zeros(3, dtype=int)
    n_ann = 0
    for json_file in _annotated_jsons(tiny_root):
        data = _read(json_file)
        images = {im["id"]: im for im in data["images"]}
        ann_ids = [a["id"] for a in data["annotations"]]
        assert len(set(ann_ids)) == len(ann_ids)
        for ann in data["annotations"]:
            n_ann += 1
            im = images[ann["image_id"]]
            W, H = im["width"], im["height"]
            assert ann["category_id"] == 1 and ann["iscrowd"] == 0
            x, y, w, h = ann["bbox"]
            assert w > 0 and h > 0 and x >= 0 and y >= 0 and x + w <= W and y + h <= H
            assert 16 <= ann["area"] <= w * h
            kps = ann["keypoints"]
            assert len(kps) == 3 * len(COCO_PERSON_KEYPOINT_NAMES)
            n_vis = 0
            for kx, ky, v in zip(kps[0::3], kps[1::3], kps[2::3]):
                assert v in (0, 1, 2)
                counts[v] += 1
                if v == 0:
                    assert (kx, ky) == (0, 0)
                    continue
                n_vis += 1
                assert round(kx, 2) == kx and round(ky, 2) == ky
                assert 0 <= kx <= W - 1 and 0 <= ky <= H - 1
                # inside the box both as JSON pixel index and as continuous coordinate (+0.5)
                for off in (0.0, 0.5):
                    assert x <= kx + off <= x + w and y <= ky + off <= y + h
            assert ann["num_keypoints"] == n_vis
    assert n_ann > 20
    assert np.all(counts > 0), counts  # visible, occluded and outside keypoints all occur


def test_keypoint_metadata_and_skeleton(tiny_root):
    data = _read(syn.split_files(syn.SYNTHETIC_SPLITS[0], tiny_root).json_file)
    (cat,) = data["categories"]
    assert cat["keypoints"] == list(COCO_PERSON_KEYPOINT_NAMES)
    assert cat["skeleton"] == [list(p) for p in syn.COCO_PERSON_SKELETON]
    # flip map: every name but the nose exactly once, pairs are left_/right_ swaps
    flat = [n for pair in COCO_PERSON_KEYPOINT_FLIP_MAP for n in pair]
    assert sorted(flat) == sorted(n for n in COCO_PERSON_KEYPOINT_NAMES if n != "nose")
    for a, b in COCO_PERSON_KEYPOINT_FLIP_MAP:
        assert a.startswith("left_") and b == "right_" + a[len("left_") :]
    # skeleton: 19 distinct 1-based pairs, closed under the horizontal flip
    sk = {tuple(sorted(p)) for p in syn.COCO_PERSON_SKELETON}
    assert len(syn.COCO_PERSON_SKELETON) == 19 and len(sk) == 19
    assert all(1 <= i <= 17 for p in sk for i in p)
    flip = dict(COCO_PERSON_KEYPOINT_FLIP_MAP)
    flip.update({b: a for a, b in COCO_PERSON_KEYPOINT_FLIP_MAP})
    names = COCO_PERSON_KEYPOINT_NAMES
    for i, j in sk:
        fi, fj = (names.index(flip.get(names[k - 1], names[k - 1])) + 1 for k in (i, j))
        assert tuple(sorted((fi, fj))) in sk


def test_unlabeled_split_has_no_annotations_but_truth_does(tiny_root):
    for spec in _tiny_splits():
        if spec.with_annotations:
            continue
        files = syn.split_files(spec, tiny_root)
        main, truth = _read(files.json_file), _read(files.truth_json_file)
        assert "annotations" not in main
        assert len(truth["annotations"]) > 0
        assert main["images"] == truth["images"]
        assert main["categories"] == truth["categories"]
        records = load_coco_json(files.json_file, files.image_root)
        assert all(r["annotations"] == [] for r in records)


def test_registration_generates_lazily(tmp_path, clean_registry):
    specs = [
        dataclasses.replace(syn.SYNTHETIC_SPLITS[0], name="synthetic_kp_test_lazy", num_images=3),
        dataclasses.replace(
            syn.SYNTHETIC_SPLITS[1], name="synthetic_kp_test_lazy_unl", num_images=2
        ),
    ]
    names = register_synthetic_keypoints(str(tmp_path), specs)
    clean_registry.extend(names)
    assert names == [
        "synthetic_kp_test_lazy",
        "synthetic_kp_test_lazy_unl",
        "synthetic_kp_test_lazy_unl_truth",
    ]
    assert not os.path.exists(tmp_path / "synthetic_kp" / "annotations")  # nothing written yet
    for name in names:
        meta = MetadataCatalog.get(name)
        assert meta.json_file.startswith(str(tmp_path / "synthetic_kp" / "annotations"))
        assert meta.image_root.startswith(str(tmp_path / "synthetic_kp"))
        assert meta.evaluator_type == "coco"
        assert meta.thing_classes == ["person"]
        assert meta.keypoint_names == COCO_PERSON_KEYPOINT_NAMES
        assert meta.keypoint_flip_map == COCO_PERSON_KEYPOINT_FLIP_MAP
        assert meta.keypoint_connection_rules == KEYPOINT_CONNECTION_RULES
    truth = DatasetCatalog.get("synthetic_kp_test_lazy_unl_truth")  # generates the split
    assert len(truth) == 2 and sum(len(r["annotations"]) for r in truth) > 0
    assert os.path.isfile(MetadataCatalog.get("synthetic_kp_test_lazy_unl").json_file)
    unlabeled = DatasetCatalog.get("synthetic_kp_test_lazy_unl")
    assert [r["image_id"] for r in unlabeled] == [r["image_id"] for r in truth]
    assert not os.path.exists(MetadataCatalog.get("synthetic_kp_test_lazy").json_file)
    # What evaluators and label-quality checks call before they read the JSON file themselves.
    meta = ensure_dataset_ready("synthetic_kp_test_lazy", category_ids=False)
    assert meta is MetadataCatalog.get("synthetic_kp_test_lazy") and os.path.isfile(meta.json_file)
    assert len(DatasetCatalog.get("synthetic_kp_test_lazy")) == 3


def test_split_files_layout(tmp_path):
    files = syn.split_files(syn.SYNTHETIC_SPLITS[1], str(tmp_path))
    assert files.image_root == str(tmp_path / "synthetic_kp" / "unlabeled")
    ann_dir = tmp_path / "synthetic_kp" / "annotations"
    assert files.json_file == str(ann_dir / "synthetic_kp_unlabeled.json")
    assert files.truth_json_file == str(ann_dir / "synthetic_kp_unlabeled_truth.json")
    assert syn.split_files(syn.SYNTHETIC_SPLITS[0], str(tmp_path)).truth_json_file is None


def test_incomplete_or_outdated_split_is_regenerated(tmp_path):
    root = str(tmp_path)
    spec = dataclasses.replace(syn.SYNTHETIC_SPLITS[0], num_images=2)
    assert not syn.is_split_complete(spec, root)
    files = syn.ensure_split(spec, root)
    assert syn.is_split_complete(spec, root)
    good = _bytes(files.json_file)
    # interrupted: images written, JSON missing or cut short
    os.remove(files.json_file)
    assert not syn.is_split_complete(spec, root)
    syn.ensure_split(spec, root)
    assert _bytes(files.json_file) == good
    with open(files.json_file, "wb") as f:
        f.write(good[: len(good) // 2])
    assert not syn.is_split_complete(spec, root)
    syn.ensure_split(spec, root)
    assert _bytes(files.json_file) == good
    # a changed spec (knob tuned) is redone
    bigger = dataclasses.replace(spec, num_images=3)
    assert not syn.is_split_complete(bigger, root)
    syn.ensure_split(bigger, root)
    assert len(_read(files.json_file)["images"]) == 3


def _standing(yaw=0.0):
    # Arms held out sideways so wrists and elbows are clear of the body.
    arm = (60.0, 0.0, 0.0, 0.0)
    leg = (8.0, 0.0, 0.0)
    return Pose(
        yaw=yaw,
        head_turn=0.0,
        lean_forward=0.0,
        lean_side=0.0,
        tilt=0.0,
        arms=(arm, arm),
        legs=(leg, leg),
    )


def _figure(pose, center=(100.0, 100.0), height=140.0, depth=-100.0):
    appearance = sample_appearance(np.random.default_rng(0), RenderConfig())
    return build_figure(pose, appearance, height, center, depth)


def _vis(ann):
    return np.asarray(ann["keypoints"]).reshape(-1, 3)[:, 2]


def test_hand_constructed_occlusion():
    bg = np.full((200, 200, 3), 128, np.uint8)
    fig = _figure(_standing())
    _, (ann,) = render_scene(bg, [fig])
    assert np.all(_vis(ann) == 2)  # a frontal figure with arms out shows every keypoint
    # JSON keypoints are pixel indices: continuous coordinates - 0.5, rounded to 2 decimals.
    k = np.asarray(ann["keypoints"]).reshape(-1, 3)
    assert np.array_equal(k[:, :2], np.round(fig.keypoints - 0.5, 2))

    # A disc over the left wrist: in front -> v = 1, behind -> v = 2.
    wrist = fig.keypoints[KP["left_wrist"]]
    disc = Part(0, "circle", wrist[None], 6.0, (0, 0, 0), 0.0)
    _, (front,) = render_scene(bg, [fig], [Distractor([disc], depth=-1e6)])
    _, (behind,) = render_scene(bg, [fig], [Distractor([disc], depth=1e6)])
    expected = np.full(17, 2)
    expected[KP["left_wrist"]] = 1
    assert np.array_equal(_vis(front), expected)
    assert np.all(_vis(behind) == 2)
    assert front["area"] < ann["area"]

    # Another person just in front: the one behind loses its face; the front one keeps all.
    other = fig.translated(4.0, 0.0)
    other.depth = fig.depth - 1.0
    _, anns = render_scene(bg, [fig, other])
    back, fore = anns
    assert back["figure_index"] == 0 and fore["figure_index"] == 1
    for name in ("nose", "left_eye", "right_eye"):
        assert _vis(back)[KP[name]] == 1
    assert np.all(_vis(fore) == 2)

    # Out of the image: (0, 0, 0); the box stays inside the image.
    out = fig.translated(-95.0, 0.0)  # pelvis at x = 5: the right side is cut off
    _, (cut,) = render_scene(bg, [out])
    k = np.asarray(cut["keypoints"]).reshape(-1, 3)
    for name in ("right_wrist", "right_elbow"):
        assert tuple(k[KP[name]]) == (0, 0, 0)
    assert k[KP["left_wrist"], 2] == 2
    assert cut["bbox"][0] == 0.0


def test_self_occlusion_of_turned_bodies():
    bg = np.full((200, 200, 3), 128, np.uint8)
    # Back view: face points hidden by the head, ears still seen.
    _, (back,) = render_scene(bg, [_figure(_standing(yaw=180.0))])
    v = _vis(back)
    face = ("nose", "left_eye", "right_eye", "left_ear", "right_ear")
    assert [v[KP[n]] for n in face] == [1, 1, 1, 2, 2]
    # Profile facing image-right: the person's left side is the far side.
    arm_down = (5.0, 0.0, 0.0, 0.0)
    leg = (0.0, 0.0, 0.0)
    pose = Pose(
        yaw=90.0,
        head_turn=0.0,
        lean_forward=0.0,
        lean_side=0.0,
        tilt=0.0,
        arms=(arm_down, arm_down),
        legs=(leg, leg),
    )
    _, (side,) = render_scene(bg, [_figure(pose)])
    v = _vis(side)
    assert v[KP["left_shoulder"]] == 1 and v[KP["right_shoulder"]] == 2
    assert v[KP["left_eye"]] == 1 and v[KP["right_eye"]] == 2 and v[KP["nose"]] == 2


def test_left_and_right_limbs_look_different():
    limbs = {"left": ("left_elbow", "left_shoulder"), "right": ("right_elbow", "right_shoulder")}
    bg = np.full((200, 200, 3), 128, np.uint8)
    for seed in range(5):
        app = sample_appearance(np.random.default_rng(seed), RenderConfig(lr_color_mode="fixed"))
        fig = build_figure(_standing(), app, 140.0, (100.0, 100.0))
        img, _ = render_scene(bg, [fig])
        for side, (a, b) in limbs.items():
            mid = (fig.keypoints[KP[a]] + fig.keypoints[KP[b]]) / 2.0  # middle of the upper arm
            bgr = img[int(mid[1]), int(mid[0])].astype(int)
            # left: warm family (red > blue), right: cool family (blue > red)
            assert (bgr[2] > bgr[0]) == (side == "left"), (seed, side, bgr)
    per_person = RenderConfig(lr_color_mode="per_person")
    sides = {
        sample_appearance(np.random.default_rng(s), per_person).band_on_left for s in range(20)
    }
    assert sides == {True, False}


def test_areas_span_small_medium_large():
    spec = syn.SYNTHETIC_SPLITS[0]
    areas = np.array([a["area"] for i in range(40) for a in syn.render_synthetic_image(spec, i)[1]])
    assert np.sum(areas < 32**2) >= 5
    assert np.sum((areas >= 32**2) & (areas < 96**2)) >= 5
    assert np.sum(areas >= 96**2) >= 3


def test_ground_truth_as_predictions_scores_100_ap(tmp_path, clean_registry):
    # End-to-end check of the keypoint convention: detectron2 adds 0.5 when loading and its
    # evaluator subtracts it again, so the loaded truth must score exactly 100 AP.
    import torch
    from detectron2.evaluation import COCOEvaluator
    from detectron2.structures import Boxes, BoxMode, Instances

    spec = dataclasses.replace(syn.SYNTHETIC_SPLITS[2], name="synthetic_kp_test_ap", num_images=8)
    clean_registry.extend(register_synthetic_keypoints(str(tmp_path), [spec]))
    records = DatasetCatalog.get(spec.name)

    def evaluate(task, keep):
        evaluator = COCOEvaluator(spec.name, tasks=(task,), distributed=False, use_fast_impl=False)
        evaluator.reset()
        for r in records:
            anns = [a for a in r["annotations"] if keep(a)]
            inst = Instances((r["height"], r["width"]))
            boxes = [BoxMode.convert(a["bbox"], a["bbox_mode"], BoxMode.XYXY_ABS) for a in anns]
            inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4))
            inst.scores = torch.ones(len(anns))
            inst.pred_classes = torch.zeros(len(anns), dtype=torch.long)
            kp = torch.tensor([a["keypoints"] for a in anns], dtype=torch.float32).reshape(
                -1, 17, 3
            )
            kp[:, :, 2] = 1.0
            inst.pred_keypoints = kp
            evaluator.process([{"image_id": r["image_id"]}], [{"instances": inst}])
        return evaluator.evaluate()[task]["AP"]

    assert evaluate("bbox", lambda a: True) == pytest.approx(100.0)
    # People without keypoints (the small ones) are ignored by COCO's keypoint evaluation, so
    # they are not predicted there.
    has_keypoints = lambda a: any(v > 0 for v in a["keypoints"][2::3])  # noqa: E731
    assert evaluate("keypoints", has_keypoints) == pytest.approx(100.0)


def test_small_people_have_a_box_but_no_keypoints():
    spec = syn.SYNTHETIC_SPLITS[0]
    assert spec.name == "synthetic_kp_labeled"
    anns = [a for i in range(40) for a in syn.render_synthetic_image(spec, i)[1]]
    small = [a for a in anns if a["area"] < 32**2]
    assert small, "the sample must contain small people"
    for ann in small:
        assert ann["num_keypoints"] == 0 and ann["keypoints"] == [0, 0, 0] * 17
        assert ann["bbox"][2] > 0 and ann["bbox"][3] > 0
    assert all(a["num_keypoints"] > 0 for a in anns if a["area"] >= 48**2)
