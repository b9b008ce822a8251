"""Tests of the annotation stage (dd_detectron/annotation, tools/annotate_net.py).

Tiny COCO sets written to tmp dirs and registered under unique names, a random-weight tiny model,
one torch thread (so that every run, sharded or not, computes bit-identical detections).
"""

import argparse
import json
import os
import subprocess
import sys
import uuid

import cv2
import numpy as np
import pytest
import torch
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import load_coco_json, register_coco_instances
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_NAMES,
)
from detectron2.modeling import build_model
from pycocotools.coco import COCO
from support import KEYPOINT_META, K
from support import annotate_cfg as tiny_cfg
from support import crash_after
from support import fake_keypoint_instances as _fake_instances
from support import make_keypoint_dataset as make_dataset
from support import read_bytes, spawn_annotation, tiny_model, torchrun_env

from dd_detectron.annotation import (
    CALIBRATION_PNG,
    OUTPUT_JSON,
    STATS_JSON,
    ImageLabels,
    LabeledStats,
    LabelSpace,
    annotate,
    labeled_statistics,
    threshold_for_mean,
    write_coco_json,
)
from dd_detectron.annotation.labels import LabelingRule, make_labels
from dd_detectron.annotation.progress import PredictionChunk, ProgressStore

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Bit-identical detections across runs and processes need the same thread count.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A labeled set (1 or 2 persons per image, 10 visible keypoints each) and an unlabeled set
    of 5 good images, a truncated JPEG, a text file and a missing file."""
    root = tmp_path_factory.mktemp("annotate_data")
    labeled = make_dataset(str(root / "labeled"), 4, seed=1, annotations_per_image=[1, 2, 1, 2])
    good = cv2.imencode(".jpg", np.full((72, 96, 3), 128, np.uint8))[1].tobytes()
    bad = [
        ("truncated.jpg", good[: len(good) // 3]),
        ("not_an_image.jpg", b"hello"),
        ("missing.jpg", None),
    ]
    unlabeled = make_dataset(str(root / "unlabeled"), 5, seed=2, extra_files=bad)
    return labeled, unlabeled


# ------------------------------------------------------------------------------------------
# Thresholds
# ------------------------------------------------------------------------------------------
def test_threshold_for_mean_hits_target():
    scores = np.array([0.9, 0.1, 0.8, 0.7, 0.3, 0.6, 0.2, 0.5, 0.4, 0.95], np.float32)
    t, achieved = threshold_for_mean(scores, num_units=4, target_mean=1.5)  # keep 6
    assert t == float(np.float32(0.5)) and achieved == 1.5
    t, achieved = threshold_for_mean(scores, 4, 0.0)  # keep none
    assert achieved == 0.0 and t > 0.95
    t, achieved = threshold_for_mean(scores, 4, 10.0)  # more than there is: keep all
    assert t == float(np.float32(0.1)) and achieved == 2.5
    ties = np.array([0.9, 0.5, 0.5, 0.5, 0.1], np.float32)
    t, achieved = threshold_for_mean(ties, 1, 2.0)  # 2 wanted: 1 (above ties) or 4 (with them)
    assert achieved == 1.0 and t > 0.5


def test_labeled_statistics_convention():
    dicts = [
        {
            "annotations": [
                {"iscrowd": 0, "keypoints": [1, 1, 2, 2, 2, 1, 0, 0, 0]},  # 2 labeled keypoints
                {"iscrowd": 1, "keypoints": [1, 1, 2, 2, 2, 2, 3, 3, 2]},  # crowd: not counted
                {"iscrowd": 0, "keypoints": [0, 0, 0, 0, 0, 0, 0, 0, 0]},  # no labeled keypoint
            ]
        },
        {"annotations": [{"iscrowd": 0, "keypoints": [1, 1, 2, 2, 2, 2, 3, 3, 2]}]},  # 3
        {},  # an image without any annotation still counts as an image
    ]
    s = labeled_statistics(dicts, ("x",))
    assert (s.num_images, s.num_instances, s.num_keypoints) == (3, 2, 5)
    assert s.instances_per_image == 2 / 3 and s.keypoints_per_instance == 2.5


def test_auto_thresholds_hit_their_target(tmp_path):
    """Constructed detections: 4 images, 10 detections; the labeled data has 1.5 instances per
    image and 8 labeled keypoints per instance -> 6 instances kept, 48 visible keypoints."""
    per_image = [[0.9, 0.2, 0.75], [0.85, 0.3], [0.6, 0.55, 0.1, 0.05], [0.5]]
    store = ProgressStore(str(tmp_path / "progress"))
    images, j = {}, 0
    for i, scores in enumerate(per_image):
        # Keypoint k of detection j scores k + 1 + j / 100: distinct, ranked by k first.
        kp_scores = [k + 1 + (j + n) / 100 for n in range(len(scores)) for k in range(K)]
        j += len(scores)
        chunk = PredictionChunk()
        chunk.add(i, 10 + i, 50, 60, _fake_instances(scores, kp_scores))
        store.write(chunk, K)
        images[10 + i] = {"file_name": f"{i}.jpg"}
    labeled = LabeledStats(("x",), num_images=2, num_instances=3, num_keypoints=24)

    labeling = make_labels(store, images, LabelingRule(None, None, 0), labeled, K)
    assert labeling.score.auto and labeling.score.target == 1.5 and labeling.score.achieved == 1.5
    assert labeling.score.value == float(np.float32(0.5))  # the 6th highest of the 10 scores
    assert [len(x.boxes) for x in labeling.labels] == [2, 1, 2, 1]
    assert labeling.keypoint.target == 8.0 and labeling.keypoint.achieved == 8.0
    # Every kept instance: keypoints 9..16 (scores >= 10) visible.
    for x in labeling.labels:
        assert x.visible.sum(axis=1).tolist() == [8] * len(x.boxes)
        assert np.all(x.visible[:, 9:]) and not np.any(x.visible[:, :9])
    assert [x.image_id for x in labeling.labels] == [10, 11, 12, 13]

    fixed = make_labels(store, images, LabelingRule(0.8, 10.0, 8), None, K)
    assert not fixed.score.auto and fixed.score.achieved == 0.5
    assert [len(x.boxes) for x in fixed.labels] == [1, 1, 0, 0] and fixed.dropped_min_keypoints == 0
    strict = make_labels(store, images, LabelingRule(0.8, 10.0, 9), None, K)
    assert [len(x.boxes) for x in strict.labels] == [
        0,
        0,
        0,
        0,
    ] and strict.dropped_min_keypoints == 2


# ------------------------------------------------------------------------------------------
# JSON
# ------------------------------------------------------------------------------------------
def test_json_round_trip_gives_back_predicted_keypoints(tmp_path):
    rng = np.random.default_rng(3)
    keypoints = np.zeros((2, K, 3), np.float32)
    keypoints[..., :2] = rng.uniform(0, 60, (2, K, 2)).astype(np.float32)
    keypoints[..., 2] = rng.uniform(0, 1, (2, K)).astype(np.float32)
    visible = keypoints[..., 2] >= 0.4
    labels = [
        ImageLabels(
            7,
            "/data/a.jpg",
            64,
            80,
            np.array([[1.25, 2.5, 40.125, 50.0625], [3.3, 4.4, 20.7, 30.1]], np.float32),
            np.array([0.9, 0.6], np.float32),
            np.array([0, 0]),
            keypoints,
            visible,
        ),
        ImageLabels(
            3,
            "/data/b.jpg",
            64,
            80,
            np.zeros((0, 4), np.float32),
            np.zeros(0, np.float32),
            np.zeros(0, np.int64),
            np.zeros((0, K, 3), np.float32),
            np.zeros((0, K), bool),
        ),
    ]
    space = LabelSpace.from_metadata(
        MetadataCatalog.get("dd_test_roundtrip_meta").set(**KEYPOINT_META), "test"
    )
    assert space.dataset_ids == (1,)
    path = str(tmp_path / "labels.json")
    assert write_coco_json(path, labels, space, {"description": "t"}, block_size=1) == (
        2,
        2,
    )

    coco = COCO(path)
    assert sorted(coco.getImgIds()) == [3, 7]
    ann = coco.loadAnns(coco.getAnnIds(imgIds=[7]))
    assert [a["id"] for a in ann] == [1, 2] and all(
        a["iscrowd"] == 0 and a["category_id"] == 1 for a in ann
    )
    assert ann[0]["num_keypoints"] == int(visible[0].sum())
    cat = coco.loadCats([1])[0]
    assert cat["keypoints"] == list(COCO_PERSON_KEYPOINT_NAMES) and len(cat["skeleton"]) > 0
    # COCO's convention in the file: pixel indices, x - 0.5 (also for v = 0 keypoints).
    raw = np.array(ann[0]["keypoints"]).reshape(K, 3)
    np.testing.assert_array_equal(raw[:, :2], keypoints[0, :, :2].astype(np.float64) - 0.5)
    np.testing.assert_array_equal(raw[:, 2], np.where(visible[0], 2, 0))

    name = f"dd_test_roundtrip_{uuid.uuid4().hex[:8]}"
    dicts = load_coco_json(path, "", name, extra_annotation_keys=["score", "keypoint_scores"])
    record = [d for d in dicts if d["image_id"] == 7][0]
    assert record["file_name"] == "/data/a.jpg" and (record["height"], record["width"]) == (64, 80)
    for i, a in enumerate(record["annotations"]):
        kp = np.array(a["keypoints"], dtype=np.float64).reshape(K, 3)
        # Exactly the predicted floats, for every keypoint.
        assert np.array_equal(kp[:, :2], keypoints[i, :, :2].astype(np.float64))
        assert np.all(kp[visible[i], 2] == 2) and np.all(kp[~visible[i], 2] == 0)
        x, y, w, h = a["bbox"]  # XYWH, rounded to 1e-3 by detectron2's converter
        np.testing.assert_allclose([x, y, x + w, y + h], labels[0].boxes[i], rtol=0, atol=1.5e-3)
        assert a["score"] == float(labels[0].scores[i])
        assert a["keypoint_scores"] == keypoints[i, :, 2].tolist()


# ------------------------------------------------------------------------------------------
# The whole stage
# ------------------------------------------------------------------------------------------
def test_annotate_labels_all_images_and_reports_bad_ones(data, tmp_path):
    labeled, unlabeled = data
    cfg = tiny_cfg(labeled, unlabeled)
    out = str(tmp_path / "run")
    results = annotate(cfg, tiny_model(cfg), out)
    summary = results["annotation"]
    with open(os.path.join(out, STATS_JSON)) as f:
        stats = json.load(f)
    assert os.path.getsize(os.path.join(out, CALIBRATION_PNG)) > 0

    # Unreadable images are skipped and listed with a reason; the others are all in the JSON.
    failed = {f["file_name"].split(os.sep)[-1]: f["error"] for f in stats["failed_images"]}
    assert set(failed) == {"truncated.jpg", "not_an_image.jpg", "missing.jpg"}
    assert all(failed.values())
    coco = COCO(os.path.join(out, OUTPUT_JSON))
    assert sorted(coco.getImgIds()) == [100, 101, 102, 103, 104]
    assert summary["images"] == 5 and summary["failed_images"] == 3

    # Auto: labeled data has 6 instances / 4 images = 1.5 per image, 10 keypoints each.
    assert stats["labeled_data"]["instances_per_image"] == 1.5
    assert stats["score_threshold"]["auto"] and stats["score_threshold"]["target"] == 1.5
    assert stats["score_threshold"]["achieved"] == pytest.approx(1.6)  # round(1.5 * 5) = 8 of 20
    # MIN_KEYPOINTS 1 may drop an instance left without a visible keypoint.
    assert (
        summary["annotations"]
        == len(coco.getAnnIds())
        == 8 - stats["instances_dropped_min_keypoints"]
    )
    # 10 visible keypoints per instance on average: 80 of the 8 candidates' 136.
    assert stats["keypoint_threshold"]["achieved"] == 10.0
    anns = coco.loadAnns(coco.getAnnIds())
    for ann in anns:
        assert ann["num_keypoints"] == sum(v == 2 for v in ann["keypoints"][2::3]) >= 1
        assert set(ann["keypoints"][2::3]) <= {0, 2}
    assert sum(ann["num_keypoints"] for ann in anns) == 80

    # detectron2 reads the file back as a training set.
    dicts = load_coco_json(
        os.path.join(out, OUTPUT_JSON), "", f"dd_test_gen_{uuid.uuid4().hex[:8]}"
    )
    assert len(dicts) == 5 and sum(len(d["annotations"]) for d in dicts) == len(anns)


@pytest.mark.slow
def test_resume_after_crash_gives_identical_files(data, tmp_path):
    labeled, unlabeled = data
    cfg = tiny_cfg(labeled, unlabeled)
    reference = str(tmp_path / "reference")
    annotate(cfg, tiny_model(cfg), reference)

    out = str(tmp_path / "resumed")
    model = tiny_model(cfg)
    handle, calls = crash_after(model, 2 * 3)  # 2 backbone passes (view pairs) per image
    with pytest.raises(RuntimeError, match="simulated crash"):
        annotate(cfg, model, out)
    handle.remove()
    assert not os.path.exists(os.path.join(out, OUTPUT_JSON))
    # Images are read in order 100..104, then the 3 bad ones: 3 good images done, saved in
    # chunks of SAVE_PERIOD = 2, so the crash lost the third one.
    done = ProgressStore(os.path.join(out, "progress")).finished_image_ids()
    assert done == {100, 101}

    _, calls = crash_after(model, 10**6)
    annotate(cfg, model, out)
    assert len(calls) == 2 * 3  # only the 3 remaining good images ran
    for name in (OUTPUT_JSON, STATS_JSON):
        assert read_bytes(os.path.join(out, name)) == read_bytes(os.path.join(reference, name))
    # A finished run reruns without any inference and rewrites the same files.
    _, calls = crash_after(model, 10**6)
    annotate(cfg, model, out)
    assert len(calls) == 0 and read_bytes(os.path.join(out, OUTPUT_JSON)) == read_bytes(
        os.path.join(reference, OUTPUT_JSON)
    )


def test_resume_refuses_other_settings(data, tmp_path):
    labeled, unlabeled = data
    cfg = tiny_cfg(labeled, unlabeled)
    out = str(tmp_path / "run")
    model = tiny_model(cfg)
    annotate(cfg, model, out)
    other = tiny_cfg(labeled, unlabeled, "TEST.AUG.FLIP", False)
    with pytest.raises(ValueError, match="TEST.AUG"):
        annotate(other, model, out)
    # Thresholds apply after inference: changing them reuses the saved detections.
    _, calls = crash_after(model, 10**6)
    annotate(
        tiny_cfg(
            labeled,
            unlabeled,
            "DD.ANNOTATE.SCORE_THRESH",
            "'0.0'",
            "DD.ANNOTATE.KEYPOINT_THRESH",
            "'0.0'",
        ),
        model,
        out,
    )
    assert len(calls) == 0
    assert len(COCO(os.path.join(out, OUTPUT_JSON)).getAnnIds()) == 5 * 4


def _shard_worker(rank, world_size, port, state_path, files, names, out):
    # What torchrun gives every worker; the tool's init path reads exactly these.
    os.environ.update(torchrun_env(rank, world_size, port))
    torch.set_num_threads(1)
    from dd_detectron.engine.launch import init_distributed_from_env, launched_by_torchrun

    assert launched_by_torchrun()
    init_distributed_from_env("cpu")
    for name, (json_file, root) in zip(names, files):
        register_coco_instances(name, KEYPOINT_META, json_file, root)
    # Another save period than the single-process run: the outputs must not depend on it.
    cfg = tiny_cfg(*names, "DD.ANNOTATE.SAVE_PERIOD", 3)
    model = build_model(cfg).eval()
    model.load_state_dict(torch.load(state_path))
    annotate(cfg, model, out)
    from detectron2.utils import comm

    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"world_size": comm.get_world_size(), "local_rank": comm.get_local_rank()}, f)
    comm.synchronize()
    # As in test_ratio_loader's gloo worker: gloo's teardown can abort a finished worker.
    os._exit(0)


@pytest.mark.slow
def test_sharded_equals_single_process(data, tmp_path):
    labeled, unlabeled = data
    cfg = tiny_cfg(labeled, unlabeled)
    model = tiny_model(cfg)
    single = str(tmp_path / "single")
    annotate(cfg, model, single)

    sharded = str(tmp_path / "sharded")
    spawn_annotation(_shard_worker, model, [labeled, unlabeled], sharded, tmp_path)
    ranks = []
    for r in range(2):
        with open(os.path.join(sharded, f"rank{r}.json")) as f:
            ranks.append(json.load(f))
    assert ranks == [{"world_size": 2, "local_rank": 0}, {"world_size": 2, "local_rank": 1}]
    # 8 images, 4 per process, saved 3 at a time: chunks start at images 0, 3, 4 and 7.
    chunks = ProgressStore(os.path.join(sharded, "progress")).chunk_paths()
    assert [os.path.basename(c) for c in chunks] == [f"chunk-{i:09d}.npz" for i in (0, 3, 4, 7)]
    for name in (OUTPUT_JSON, STATS_JSON):
        assert read_bytes(os.path.join(sharded, name)) == read_bytes(os.path.join(single, name))


def test_clear_errors(data, tmp_path):
    labeled, unlabeled = data
    model = tiny_model(tiny_cfg(labeled, unlabeled))
    out = str(tmp_path / "x")
    empty = make_dataset(str(tmp_path / "empty"), 0, seed=5)
    with pytest.raises(ValueError, match="DD.ANNOTATE.DATASETS"):
        annotate(tiny_cfg(labeled, empty), model, out)
    with pytest.raises(ValueError, match="MODEL.KEYPOINT_ON"):
        annotate(tiny_cfg(labeled, unlabeled, "MODEL.KEYPOINT_ON", False), model, out)
    no_keypoints = make_dataset(
        str(tmp_path / "nokp"), 2, seed=6, annotations_per_image=[1, 1], num_visible=0
    )
    with pytest.raises(ValueError, match="DATASETS.TRAIN"):
        annotate(tiny_cfg(no_keypoints, unlabeled), model, out)
    with pytest.raises(ValueError, match="TEST.AUG.MIN_SIZES"):
        annotate(tiny_cfg(labeled, unlabeled, "TEST.AUG.MIN_SIZES", ()), model, out)
    with pytest.raises(ValueError, match="DD.ANNOTATE.SCORE_THRESH"):
        annotate(tiny_cfg(labeled, unlabeled, "DD.ANNOTATE.SCORE_THRESH", "'high'"), model, out)
    with pytest.raises(KeyError, match="not registered"):
        annotate(tiny_cfg(labeled, "dd_test_no_such_dataset"), model, out)


@pytest.mark.slow
def test_visualize_annotations_tool(data, tmp_path):
    labeled, unlabeled = data
    cfg = tiny_cfg(labeled, unlabeled, "DD.ANNOTATE.SCORE_THRESH", "'0.0'")
    out = str(tmp_path / "run")
    annotate(cfg, tiny_model(cfg), out)
    vis = str(tmp_path / "vis")
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO, "tools", "visualize_annotations.py"),
            "--json",
            os.path.join(out, OUTPUT_JSON),
            "--output",
            vis,
            "--num-images",
            "2",
        ],
        check=True,
        cwd=REPO,
        capture_output=True,
    )
    drawn = sorted(os.listdir(vis))
    assert len(drawn) == 2 and all(n.endswith(".jpg") for n in drawn)


def test_label_quality_of_true_and_shifted_labels(data, tmp_path):
    labeled, _ = data
    from detectron2.data import DatasetCatalog

    from dd_detectron.annotation import label_quality

    def labels_from_truth(shift):
        out = []
        for record in DatasetCatalog.get(labeled):
            anns = record["annotations"]
            kp = np.array([a["keypoints"] for a in anns], np.float32).reshape(len(anns), K, 3)
            boxes = np.array(
                [[x, y, x + w, y + h] for x, y, w, h in (a["bbox"] for a in anns)], np.float32
            )
            kp[..., 0] += shift
            out.append(
                ImageLabels(
                    record["image_id"],
                    record["file_name"],
                    record["height"],
                    record["width"],
                    boxes,
                    np.ones(len(anns), np.float32),
                    np.zeros(len(anns), np.int64),
                    kp,
                    kp[..., 2] > 0,
                )
            )
        return out

    space = LabelSpace.from_metadata(MetadataCatalog.get(labeled), labeled)
    results = []
    for shift in (0.0, 6.0):
        path = str(tmp_path / f"shift{shift}.json")
        write_coco_json(path, labels_from_truth(shift), space, {})
        results.append(label_quality(path, labeled))
    assert results[0]["keypoints"]["AP"] == pytest.approx(100.0) and results[0]["bbox"][
        "AP"
    ] == pytest.approx(100.0)
    assert results[1]["keypoints"]["AP"] < 90.0 and results[1]["labels"] == 6


def test_benchmark_annotate_task_reports_the_stage_timing(data, load_tool, monkeypatch, capsys):
    labeled, _ = data
    benchmark = load_tool("benchmark")
    summaries = []

    def annotate_with_timing(*args, **kwargs):
        # Keeps what annotate() reports, its own split of its time included; the task prints it.
        results = annotate(*args, **kwargs)
        summaries.append(results["annotation"])
        return results

    monkeypatch.setattr(benchmark, "annotate", annotate_with_timing)
    cfg = tiny_cfg(labeled, labeled)  # all 4 images readable: the first one builds the model
    result = benchmark.TASKS["annotate"](cfg, argparse.Namespace(num_iters=3, warmup=1))
    assert result["images"] == 3 and result["views"] == 4 and result["images_per_s"] > 0
    assert result["timing"] == summaries[-1]["timing"] and result["timing"]["images"] == 3
    printed = capsys.readouterr().out
    assert all(key in printed for key in result["timing"])
