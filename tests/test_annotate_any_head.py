"""Tests of the annotation stage for R-CNN heads other than keypoints: labels
of box-only and mask models, in several categories.

Tiny multi-category COCO sets (boxes and polygon masks) written to tmp dirs and registered under
unique names, tiny random-weight Faster / Mask R-CNNs (tests/tiny_keypoint_rcnn.py), single-view
inference, one torch thread.
"""

import json
import os
import re
import uuid

import cv2
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.data import DatasetCatalog, DatasetMapper, MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.detection_utils import read_image
from detectron2.data.transforms import ResizeShortestEdge
from detectron2.modeling import build_model
from detectron2.structures import BitMasks, Boxes, Instances
from detectron2.utils.events import EventStorage
from pycocotools.coco import COCO
from support import CATEGORIES, SIZE, crash_after
from support import make_category_dataset as make_dataset
from support import read_bytes, spawn_annotation, tiny_model, tiny_rcnn_cfg, torchrun_env

from dd_detectron.annotation import (
    CALIBRATION_PNG,
    LABEL_QUALITY_JSON,
    OUTPUT_JSON,
    STATS_JSON,
    ImageLabels,
    LabeledStats,
    LabelSpace,
    annotate,
    label_quality,
    labeled_statistics,
    write_coco_json,
)
from dd_detectron.annotation.labels import LabelingRule, make_labels
from dd_detectron.annotation.progress import PredictionChunk, ProgressStore

# Bit-identical detections across runs and processes need the same thread count.
pytestmark = pytest.mark.usefixtures("one_thread")


def rcnn_cfg(mask, labeled, unlabeled, *opts):
    return tiny_rcnn_cfg(
        mask,
        len(CATEGORIES),
        "TEST.DETECTIONS_PER_IMAGE",
        4,
        "DATASETS.TRAIN",
        (labeled,),
        "DATALOADER.NUM_WORKERS",
        0,
        "INPUT.MIN_SIZE_TEST",
        64,
        "INPUT.MIN_SIZE_TRAIN",
        (64,),
        "TEST.AUG.ENABLED",
        False,
        "DD.ANNOTATE.DATASETS",
        (unlabeled,),
        "DD.ANNOTATE.SAVE_PERIOD",
        2,
        *opts,
    )


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A labeled set of 4 images (cat: 6 instances, dog: 2, bird: 1), an unlabeled set of 5
    images and a truncated JPEG, and the true labels of those 5 images."""
    root = tmp_path_factory.mktemp("any_head_data")
    labeled = make_dataset(str(root / "labeled"), 4, 1, [[0, 0, 1], [0, 0], [0, 1, 2], [0]])
    good = cv2.imencode(".jpg", np.full(SIZE + (3,), 128, np.uint8))[1].tobytes()
    bad = [("truncated.jpg", good[: len(good) // 3])]
    unlabeled = make_dataset(str(root / "unlabeled"), 5, 2, extra_files=bad)
    truth = make_dataset(str(root / "truth"), 5, 2, [[0], [0, 1], [2], [0, 0], [1]])
    return labeled, unlabeled, truth


def _predict(cfg, model, file_name):
    """detectron2's plain inference on one image (what single-view labels must hold)."""
    image = read_image(file_name, cfg.INPUT.FORMAT)
    resize = ResizeShortestEdge(cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MAX_SIZE_TEST)
    resized = resize.get_transform(image).apply_image(image)
    tensor = torch.as_tensor(np.ascontiguousarray(resized.transpose(2, 0, 1)))
    with torch.no_grad():
        out = model([{"image": tensor, "height": image.shape[0], "width": image.shape[1]}])
    return out[0]["instances"]


# ------------------------------------------------------------------------------------------
# Masks: RLE in the progress chunks and in the JSON
# ------------------------------------------------------------------------------------------
def _fake_instances(scores, classes, seed):
    n = len(scores)
    rng = np.random.default_rng(seed)
    inst = Instances(SIZE)
    inst.pred_boxes = Boxes(torch.tensor([[1.0 + i, 2.0, 30.0 + i, 40.0] for i in range(n)]))
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
    inst.pred_masks = torch.as_tensor(rng.random((n,) + SIZE) < 0.3)
    return inst


def _chunked_store(root, per_image, split):
    """A progress directory of mask detections; ``split``: the image index of each chunk's
    first image."""
    store = ProgressStore(root)
    bounds = list(split) + [len(per_image)]
    for start, end in zip(bounds[:-1], bounds[1:]):
        chunk = PredictionChunk(keypoints=False, masks=True)
        for i in range(start, end):
            scores, classes = per_image[i]
            chunk.add(i, 10 + i, *SIZE, _fake_instances(scores, classes, seed=i))
        store.write(chunk, 0)
    return store


def test_rle_round_trip_gives_back_the_predicted_masks(tmp_path):
    per_image = [([0.9, 0.4], [0, 2]), ([], []), ([0.8, 0.7, 0.1], [1, 1, 0])]
    images = {10 + i: {"file_name": f"{i}.jpg"} for i in range(3)}
    store = _chunked_store(str(tmp_path / "one"), per_image, [0])
    labeling = make_labels(store, images, LabelingRule(0.3, None, 0), None, 0, masks=True)
    assert [len(x.boxes) for x in labeling.labels] == [2, 0, 2]
    assert labeling.keypoint is None and all(x.keypoints is None for x in labeling.labels)
    space = LabelSpace(tuple(c for _, c in CATEGORIES), tuple(i for i, _ in CATEGORIES), (), ())
    path = str(tmp_path / "labels.json")
    assert write_coco_json(path, labeling.labels, space, {}, block_size=2) == (3, 4)

    coco = COCO(path)
    anns = coco.loadAnns(coco.getAnnIds())
    predicted = [_fake_instances(*per_image[0], seed=0), _fake_instances(*per_image[2], seed=2)]
    expected = [(predicted[0], 0), (predicted[0], 1), (predicted[1], 0), (predicted[1], 1)]
    assert len(anns) == len(expected)  # kept: score >= 0.3
    for ann, (inst, i) in zip(anns, expected):
        assert ann["segmentation"]["size"] == list(SIZE)
        assert isinstance(ann["segmentation"]["counts"], str)
        mask = inst.pred_masks[i].numpy()
        np.testing.assert_array_equal(mask_util.decode(ann["segmentation"]).astype(bool), mask)
        np.testing.assert_array_equal(coco.annToMask(ann).astype(bool), mask)
        assert ann["area"] == float(mask.sum())
        assert ann["category_id"] == CATEGORIES[int(inst.pred_classes[i])][0]
        assert "keypoints" not in ann and "keypoint_scores" not in ann
    assert all("keypoints" not in c for c in coco.loadCats(coco.getCatIds()))

    # The same detections saved in other chunks (other processes, a resumed run): same bytes.
    other = _chunked_store(str(tmp_path / "three"), per_image, [0, 1, 2])
    relabeled = make_labels(other, images, LabelingRule(0.3, None, 0), None, 0, masks=True)
    path_other = str(tmp_path / "labels_other.json")
    write_coco_json(path_other, relabeled.labels, space, {}, block_size=2)
    assert read_bytes(path_other) == read_bytes(path)


# ------------------------------------------------------------------------------------------
# Per-category thresholds
# ------------------------------------------------------------------------------------------
def test_labeled_statistics_by_kind_and_category():
    dicts = [
        {
            "annotations": [
                {"iscrowd": 0, "category_id": 0, "segmentation": [[1, 1, 5, 1, 5, 5]]},
                {"iscrowd": 0, "category_id": 1},  # no mask: a box instance only
                {"iscrowd": 1, "category_id": 0, "segmentation": [[1, 1, 5, 1, 5, 5]]},  # crowd
            ]
        },
        {"annotations": [{"iscrowd": 0, "category_id": 2, "segmentation": [[1, 1, 5, 1, 5, 5]]}]},
    ]
    masks = labeled_statistics(dicts, ("x",), "masks", num_classes=3)
    assert (masks.num_images, masks.num_instances, masks.category_instances) == (2, 2, (1, 0, 1))
    boxes = labeled_statistics(dicts, ("x",), "boxes", num_classes=3)
    assert boxes.num_instances == 3 and boxes.category_instances == (1, 1, 1)
    assert "category_instances" not in labeled_statistics(dicts, ("x",), "boxes").to_dict()
    with pytest.raises(ValueError, match="MODEL.ROI_HEADS.NUM_CLASSES"):
        labeled_statistics(dicts, ("x",), "boxes", num_classes=2)


def test_per_category_thresholds_hit_their_targets(tmp_path):
    """2 unlabeled images; labeled: 4 images with 6 cats, 2 dogs, 1 bird. Cat wants 1.5 per
    image (3 kept), dog 0.5 (1 kept); bird has fewer than 2 labeled instances: global threshold
    (9 / 4 = 2.25 per image: the 5 best of all 9 detections, t = 0.6)."""
    per_image = [
        ([0.9, 0.95, 0.7, 0.3, 0.4], [0, 1, 0, 2, 1]),
        ([0.8, 0.6, 0.5, 0.2], [0, 0, 1, 2]),
    ]
    store = ProgressStore(str(tmp_path / "progress"))
    chunk = PredictionChunk(keypoints=False)
    for i, (scores, classes) in enumerate(per_image):
        chunk.add(i, 10 + i, *SIZE, _fake_instances(scores, classes, seed=i))
    store.write(chunk, 0)
    images = {10: {"file_name": "a.jpg"}, 11: {"file_name": "b.jpg"}}
    labeled = LabeledStats(("x",), 4, 9, 0, category_instances=(6, 2, 1))
    rule = LabelingRule(None, None, 0, per_category=True, category_min_instances=2)

    labeling = make_labels(store, images, rule, labeled, 0)
    assert labeling.score.value == float(np.float32(0.6)) and labeling.score.target == 2.25
    cat, dog, bird = labeling.category_scores
    assert cat.calibrated and cat.choice.value == float(np.float32(0.7))
    assert cat.choice.target == 1.5 and cat.choice.achieved == 1.5
    assert dog.calibrated and dog.choice.value == float(np.float32(0.95))
    assert dog.choice.target == 0.5 and dog.choice.achieved == 0.5
    assert not bird.calibrated and bird.choice.value == labeling.score.value
    assert bird.choice.target is None and bird.choice.achieved == 0.0
    kept = [sorted(zip(x.classes.tolist(), x.scores.tolist())) for x in labeling.labels]
    f32 = lambda v: float(np.float32(v))  # noqa: E731
    assert kept == [[(0, f32(0.7)), (0, f32(0.9)), (1, f32(0.95))], [(0, f32(0.8))]]

    # Global mode: one threshold for every category.
    glob = make_labels(store, images, LabelingRule(None, None, 0), labeled, 0)
    assert glob.category_scores is None and sum(len(x.boxes) for x in glob.labels) == 5


def test_per_category_annotation_of_a_box_model(data, tmp_path):
    labeled, unlabeled, _ = data
    cfg = rcnn_cfg(
        False,
        labeled,
        unlabeled,
        "DD.ANNOTATE.SCORE_THRESH_MODE",
        "per_category",
        "DD.ANNOTATE.CATEGORY_MIN_INSTANCES",
        2,
        # Every class among the detections (with 4, this random model's are all dogs).
        "TEST.DETECTIONS_PER_IMAGE",
        30,
    )
    out = str(tmp_path / "run")
    summary = annotate(cfg, tiny_model(cfg), out)["annotation"]
    with open(os.path.join(out, STATS_JSON)) as f:
        stats = json.load(f)
    assert stats["labeled_data"]["category_instances"] == [6, 2, 1]
    per_category = stats["score_threshold_per_category"]
    assert [c["name"] for c in per_category] == ["cat", "dog", "bird"]
    assert [c["calibrated"] for c in per_category] == [True, True, False]
    assert "keypoint_threshold" not in stats and "keypoints_per_instance" not in stats

    # Each calibrated category keeps round(target * 5 images) of its detections: cat 1.5 per
    # image, 8; dog 0.5, 3 (rounded half up); bird keeps those above the global threshold.
    available = np.zeros(3, np.int64)
    for chunk in ProgressStore(os.path.join(out, "progress")).iter_chunks(("classes",)):
        available += np.bincount(chunk["classes"], minlength=3)
    assert available[0] >= 8 and available[1] >= 3 and available[2] > 0
    coco = COCO(os.path.join(out, OUTPUT_JSON))
    kept = [len(coco.getAnnIds(catIds=[dataset_id])) for dataset_id, _ in CATEGORIES]
    assert kept[:2] == [8, 3]
    assert [c["choice"]["achieved"] for c in per_category] == [k / 5 for k in kept]
    assert [c["choice"]["target"] for c in per_category] == [1.5, 0.5, None]
    assert per_category[2]["choice"]["value"] == stats["score_threshold"]["value"]
    assert per_category[0]["choice"]["value"] != per_category[1]["choice"]["value"]
    assert summary["annotations"] == len(coco.getAnnIds())
    with open(os.path.join(out, OUTPUT_JSON)) as f:
        info = json.load(f)["info"]
    assert set(info["score_threshold_per_category"]) == {"cat", "dog", "bird"}
    assert info["description"].startswith("Hard labels (boxes)")
    from PIL import Image

    with Image.open(os.path.join(out, CALIBRATION_PNG)) as png:  # the score and category panels
        assert png.size[0] > 1.5 * png.size[1]


# ------------------------------------------------------------------------------------------
# The whole stage with a mask model
# ------------------------------------------------------------------------------------------
def test_mask_model_labels_hold_its_predicted_masks(data, tmp_path):
    labeled, unlabeled, truth = data
    cfg = rcnn_cfg(True, labeled, unlabeled, "DD.ANNOTATE.SCORE_THRESH", "'0.0'")
    model = tiny_model(cfg)
    out = str(tmp_path / "run")
    results = annotate(cfg, model, out, truth=truth)
    with open(os.path.join(out, STATS_JSON)) as f:
        stats = json.load(f)
    assert [f["file_name"].split(os.sep)[-1] for f in stats["failed_images"]] == ["truncated.jpg"]

    coco = COCO(os.path.join(out, OUTPUT_JSON))
    assert sorted(coco.getImgIds()) == [100, 101, 102, 103, 104]
    assert [c["name"] for c in coco.loadCats(coco.getCatIds())] == ["cat", "dog", "bird"]
    num_masks = 0
    for image_id in coco.getImgIds():
        file_name = coco.loadImgs([image_id])[0]["file_name"]
        predicted = _predict(cfg, model, file_name)
        anns = coco.loadAnns(coco.getAnnIds(imgIds=[image_id]))
        assert len(anns) == len(predicted) == 4
        for ann, i in zip(anns, range(len(predicted))):
            mask = mask_util.decode(ann["segmentation"]).astype(bool)
            np.testing.assert_array_equal(mask, predicted.pred_masks[i].numpy())
            assert ann["score"] == float(predicted.scores[i])
            assert ann["category_id"] == CATEGORIES[int(predicted.pred_classes[i])][0]
            num_masks += int(mask.any())
    assert num_masks > 0  # not only empty masks

    quality = results["label_quality"]
    assert set(quality) == {"images", "labels", "bbox", "segm"}
    with open(os.path.join(out, LABEL_QUALITY_JSON)) as f:
        assert json.load(f) == quality


def test_mask_model_resumes_to_identical_files(data, tmp_path):
    labeled, unlabeled, _ = data
    # The views made in the main process this time (the teacher makes the one view).
    cfg = rcnn_cfg(True, labeled, unlabeled, "DD.ANNOTATE.VIEWS_IN_WORKERS", False)
    reference = str(tmp_path / "reference")
    annotate(cfg, tiny_model(cfg), reference)

    out = str(tmp_path / "resumed")
    model = tiny_model(cfg)
    handle, _ = crash_after(model, 3)  # one backbone pass per image
    with pytest.raises(RuntimeError, match="simulated crash"):
        annotate(cfg, model, out)
    handle.remove()
    assert ProgressStore(os.path.join(out, "progress")).finished_image_ids() == {100, 101}
    _, calls = crash_after(model, 10**6)
    annotate(cfg, model, out)
    assert len(calls) == 3
    for name in (OUTPUT_JSON, STATS_JSON):
        assert read_bytes(os.path.join(out, name)) == read_bytes(os.path.join(reference, name))


def _shard_worker(rank, world_size, port, state_path, files, names, out):
    # What torchrun gives every worker (as in test_annotate.py's sharded test).
    os.environ.update(torchrun_env(rank, world_size, port))
    torch.set_num_threads(1)
    from detectron2.utils import comm

    from dd_detectron.engine.launch import init_distributed_from_env

    init_distributed_from_env("cpu")
    for name, (json_file, root) in zip(names, files):
        register_coco_instances(name, {}, json_file, root)
    cfg = rcnn_cfg(True, *names, "DD.ANNOTATE.SAVE_PERIOD", 3)
    model = build_model(cfg).eval()
    model.load_state_dict(torch.load(state_path))
    annotate(cfg, model, out)
    comm.synchronize()
    # As in test_ratio_loader's gloo worker: gloo's teardown can abort a finished worker.
    os._exit(0)


@pytest.mark.slow
def test_mask_model_sharded_equals_single_process(data, tmp_path):
    labeled, unlabeled, _ = data
    cfg = rcnn_cfg(True, labeled, unlabeled)
    model = tiny_model(cfg)
    single = str(tmp_path / "single")
    annotate(cfg, model, single)

    sharded = str(tmp_path / "sharded")
    spawn_annotation(_shard_worker, model, [labeled, unlabeled], sharded, tmp_path)
    # 6 images, 3 per process, saved 3 at a time: one chunk per process, at images 0 and 3.
    chunks = ProgressStore(os.path.join(sharded, "progress")).chunk_names()
    assert chunks == ["chunk-000000000.npz", "chunk-000000003.npz"]
    for name in (OUTPUT_JSON, STATS_JSON):
        assert read_bytes(os.path.join(sharded, name)) == read_bytes(os.path.join(single, name))


# ------------------------------------------------------------------------------------------
# The labels as training data
# ------------------------------------------------------------------------------------------
@pytest.mark.parametrize("mask", [False, True], ids=["box", "mask"])
def test_labels_train_through_detectron2(data, tmp_path, mask):
    labeled, unlabeled, _ = data
    cfg = rcnn_cfg(mask, labeled, unlabeled, "DD.ANNOTATE.SCORE_THRESH", "'0.0'")
    out = str(tmp_path / "run")
    annotate(cfg, tiny_model(cfg), out)

    name = f"dd_test_generated_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, os.path.join(out, OUTPUT_JSON), "")
    records = DatasetCatalog.get(name)
    assert MetadataCatalog.get(name).thing_classes == ["cat", "dog", "bird"]
    assert len(records) == 5 and all(len(r["annotations"]) == 4 for r in records)
    assert all(("segmentation" in a) == mask for r in records for a in r["annotations"])

    train_cfg = cfg.clone()
    train_cfg.defrost()
    # RLE masks train as bitmasks; box-only labels with detectron2's default (polygon).
    train_cfg.INPUT.MASK_FORMAT = "bitmask" if mask else "polygon"
    mapper = DatasetMapper(train_cfg, is_train=True)
    batch = [mapper(r) for r in records[:2]]
    for x in batch:
        instances = x["instances"]
        assert len(instances) == 4 and instances.gt_classes.max() < len(CATEGORIES)
        assert instances.has("gt_masks") == mask
        if mask:
            assert isinstance(instances.gt_masks, BitMasks)
            assert instances.gt_masks.tensor.shape[1:] == x["image"].shape[1:]
    model = tiny_model(train_cfg).train()
    with EventStorage():
        losses = model(batch)
    assert ("loss_mask" in losses) == mask
    assert all(torch.isfinite(v) for v in losses.values())


# ------------------------------------------------------------------------------------------
# Label quality
# ------------------------------------------------------------------------------------------
def test_label_quality_reports_mask_ap(data, tmp_path):
    _, _, truth = data
    coco = COCO(MetadataCatalog.get(truth).json_file)
    space = LabelSpace(tuple(c for _, c in CATEGORIES), tuple(i for i, _ in CATEGORIES), (), ())
    contiguous = {i: c for c, (i, _) in enumerate(CATEGORIES)}

    def labels(erode):
        out = []
        for image in coco.loadImgs(coco.getImgIds()):
            anns = coco.loadAnns(coco.getAnnIds(imgIds=[image["id"]]))
            masks = []
            for a in anns:
                m = coco.annToMask(a)
                if erode:  # a mask of a quarter of the truth's area, the same box
                    ys, xs = np.nonzero(m)
                    m = np.zeros_like(m)
                    m[
                        ys.min() : (ys.min() + ys.max()) // 2, xs.min() : (xs.min() + xs.max()) // 2
                    ] = 1
                rle = mask_util.encode(np.asfortranarray(m))
                masks.append({"size": rle["size"], "counts": rle["counts"].decode("ascii")})
            boxes = np.array([[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)])
            out.append(
                ImageLabels(
                    image["id"],
                    image["file_name"],
                    image["height"],
                    image["width"],
                    boxes.reshape(-1, 4).astype(np.float32),
                    np.ones(len(anns), np.float32),
                    np.array([contiguous[a["category_id"]] for a in anns], np.int64),
                    None,
                    None,
                    masks,
                )
            )
        return out

    results = []
    for erode in (False, True):
        path = str(tmp_path / f"erode{erode}.json")
        write_coco_json(path, labels(erode), space, {})
        results.append(label_quality(path, truth, iou_types=("bbox", "segm")))
    assert set(results[0]) == {"images", "labels", "bbox", "segm"}
    assert results[0]["bbox"]["AP"] == pytest.approx(100.0)
    assert results[0]["segm"]["AP"] == pytest.approx(100.0)
    assert results[1]["bbox"]["AP"] == pytest.approx(100.0) and results[1]["segm"]["AP"] < 50.0


# ------------------------------------------------------------------------------------------
# Bad input
# ------------------------------------------------------------------------------------------
def test_clear_errors_for_other_heads(data, tmp_path):
    labeled, unlabeled, truth = data
    mask_model = tiny_model(rcnn_cfg(True, labeled, unlabeled))
    out = str(tmp_path / "x")

    def fails(match, *opts, labeled=labeled, exception=ValueError):
        with pytest.raises(exception, match=match):
            annotate(rcnn_cfg(True, labeled, unlabeled, *opts), mask_model, out)

    # A mask model asked for keypoints, or a config that leaves its masks out.
    fails(
        "MODEL.KEYPOINT_ON is True, but the model has no keypoint head", "MODEL.KEYPOINT_ON", True
    )
    fails("MODEL.MASK_ON is False, but the model has a mask head", "MODEL.MASK_ON", False)
    fails("DD.ANNOTATE.SCORE_THRESH_MODE must be one of", "DD.ANNOTATE.SCORE_THRESH_MODE", "class")
    fails(
        "SCORE_THRESH_MODE 'per_category' calibrates an 'auto'",
        "DD.ANNOTATE.SCORE_THRESH_MODE",
        "per_category",
        "DD.ANNOTATE.SCORE_THRESH",
        "'0.5'",
    )
    fails("DD.ANNOTATE.CATEGORY_MIN_INSTANCES", "DD.ANNOTATE.CATEGORY_MIN_INSTANCES", 0)
    # The labeled data's categories are the labels': one per class of the model.
    fails("MODEL.ROI_HEADS.NUM_CLASSES = 2", "MODEL.ROI_HEADS.NUM_CLASSES", 2)
    # "auto" on a labeled set without masks: the error names the key and the file.
    no_masks = make_dataset(str(tmp_path / "nomasks"), 2, 7, [[0], [1]], masks=False)
    json_file = MetadataCatalog.get(no_masks).json_file
    fails(f"DATASETS.TRAIN.*{re.escape(json_file)}.*segmentation", labeled=no_masks)
    # Mask AP against true labels without masks: the error names the file.
    labels = str(tmp_path / "labels.json")
    annotate(
        rcnn_cfg(True, labeled, unlabeled, "DD.ANNOTATE.SCORE_THRESH", "'0.0'"), mask_model, out
    )
    os.replace(os.path.join(out, OUTPUT_JSON), labels)
    truth_no_masks = make_dataset(str(tmp_path / "t"), 5, 2, [[0]] * 5, masks=False)
    with pytest.raises(ValueError, match=re.escape(MetadataCatalog.get(truth_no_masks).json_file)):
        label_quality(labels, truth_no_masks, iou_types=("bbox", "segm"))
    assert label_quality(labels, truth, iou_types=("bbox", "segm"))["labels"] == 20
