"""Tests of the COCO reproduction kit: datasets/prepare_coco.py, the COCO and image-folder
datasets, the configs of configs/COCO-Keypoints, and the pipeline's tools on a tiny COCO tree.

The tree (``make_tiny_coco_tree``) has COCO's real layout and JSON structure at a few images:
2014 train (6 images) and val (5, of which 2 are minival = 2017 val), 2017 train (the 9 others,
2017 file names), 2017 val, 2017 unlabeled (3, image-info file with 2 categories), and a folder
of frames. Tools run in subprocesses with DETECTRON2_DATASETS pointing at the tree, so
detectron2's builtin names and ours resolve there exactly as on a real machine.
"""

import contextlib
import dataclasses
import io
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import cv2
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES
from detectron2.modeling import build_model
from PIL import Image

from dd_detectron import add_dd_config
from dd_detectron.data.datasets import FOLDER_PREFIX, register_path_datasets
from dd_detectron.data.datasets.coco import (
    PAPER_SPLITS,
    get_paper_split,
    load_image_info_json,
    register_coco_unlabeled,
)
from dd_detectron.data.datasets.image_folder import (
    image_id_for,
    list_image_files,
    load_image_folder,
    read_image_size,
    register_image_folder,
)

REPO = Path(__file__).resolve().parent.parent
COCO_CONFIGS = REPO / "configs" / "COCO-Keypoints"
PREPARE = str(REPO / "datasets" / "prepare_coco.py")
SKELETON = [
    [16, 14],
    [14, 12],
    [17, 15],
    [15, 13],
    [12, 13],
    [6, 12],
    [7, 13],
    [6, 7],
    [6, 8],
    [7, 9],
    [8, 10],
    [9, 11],
    [2, 3],
    [1, 2],
    [1, 3],
    [2, 4],
    [3, 5],
    [4, 6],
    [5, 7],
]
PERSON = {
    "supercategory": "person",
    "id": 1,
    "name": "person",
    "keypoints": list(COCO_PERSON_KEYPOINT_NAMES),
    "skeleton": SKELETON,
}

# The tiny tree: image id -> (height, width, number of people). Ids are real COCO ids.
TRAIN2014 = {
    9: (72, 96, 2),
    25: (80, 64, 1),
    30: (72, 96, 0),
    34: (64, 80, 1),
    36: (72, 96, 3),
    42: (96, 72, 1),
}
VAL2014 = {139: (72, 96, 2), 285: (64, 80, 1), 632: (72, 96, 1), 724: (80, 64, 0), 776: (72, 96, 2)}
MINIVAL = (139, 632)  # = 2017 val
UNLABELED2017 = {8: (72, 96), 15: (64, 80), 22: (96, 72)}
CO35_IDS = sorted(set(VAL2014) - set(MINIVAL))


# ------------------------------------------------------------------------------------------
# The tiny COCO tree
# ------------------------------------------------------------------------------------------
def _jpeg(path, height, width, seed):
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    cv2.imwrite(str(path), rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


def _person(rng, image_id, ann_id, height, width, crowd=False):
    x, y = float(rng.uniform(0, width / 3)), float(rng.uniform(0, height / 3))
    w, h = float(width / 2), float(height / 2)
    visible = int(rng.integers(1, 18))
    keypoints = []
    for k in range(17):
        point = [round(x + float(rng.uniform(0, w)), 2), round(y + float(rng.uniform(0, h)), 2), 2]
        keypoints += point if k < visible else [0, 0, 0]
    return {
        "segmentation": [[x, y, x + w, y, x + w, y + h, x, y + h]],
        "num_keypoints": 0 if crowd else visible,
        "area": w * h,
        "iscrowd": int(crowd),
        "keypoints": [0] * 51 if crowd else keypoints,
        "image_id": image_id,
        "bbox": [x, y, w, h],
        "category_id": 1,
        "id": ann_id,
    }


def _split(table, file_pattern, image_dir, seed, ann_start):
    rng = np.random.default_rng(seed)
    images, annotations = [], []
    for image_id, (height, width, people) in sorted(table.items()):
        file_name = file_pattern.format(image_id)
        _jpeg(image_dir / file_name, height, width, seed + image_id)
        images.append(
            {
                "license": 1,
                "file_name": file_name,
                "coco_url": "",
                "height": height,
                "width": width,
                "date_captured": "2013-11-14 17:02:52",
                "flickr_url": "",
                "id": image_id,
            }
        )
        for p in range(people):
            # The last person of an image with 3 is a crowd region, as in COCO.
            annotations.append(
                _person(rng, image_id, ann_start + image_id * 10 + p, height, width, crowd=p == 2)
            )
    return images, annotations


def _coco(images, annotations=None, categories=(PERSON,), description=""):
    data = {
        "info": {"description": description, "year": 2014},
        "licenses": [{"id": 1, "name": "test"}],
        "images": images,
        "categories": list(categories),
    }
    if annotations is not None:
        data["annotations"] = annotations
    return data


def _dump(path, data):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        json.dump(data, f)


def make_tiny_coco_tree(root):
    """Writes a tiny COCO tree in detectron2's layout under ``root`` (see the module docstring).

    Args:
        root: the datasets root (what DETECTRON2_DATASETS will be).

    Returns:
        dict: paper name -> list of image ids, plus "folder" -> the frames folder.
    """
    root = Path(root)
    coco, ann = root / "coco", root / "coco" / "annotations"
    train14_images, train14_anns = _split(
        TRAIN2014, "COCO_train2014_{:012d}.jpg", coco / "train2014", 1, 0
    )
    val14_images, val14_anns = _split(VAL2014, "COCO_val2014_{:012d}.jpg", coco / "val2014", 2, 0)
    _dump(ann / "person_keypoints_train2014.json", _coco(train14_images, train14_anns))
    _dump(ann / "person_keypoints_val2014.json", _coco(val14_images, val14_anns))
    # COCO 2017 re-splits the same images and labels under 12-digit file names.
    train17 = {**TRAIN2014, **{i: VAL2014[i] for i in CO35_IDS}}
    val17 = {i: VAL2014[i] for i in MINIVAL}

    def to_2017(imgs):
        return [dict(img, file_name=img["file_name"].rsplit("_", 1)[-1]) for img in imgs]

    train17_images = to_2017(
        sorted(
            train14_images + [i for i in val14_images if i["id"] in train17], key=lambda i: i["id"]
        )
    )
    train17_anns = [a for a in train14_anns + val14_anns if a["image_id"] in train17]
    val17_images = to_2017([i for i in val14_images if i["id"] in val17])
    val17_anns = [a for a in val14_anns if a["image_id"] in val17]
    for images, directory in ((train17_images, "train2017"), (val17_images, "val2017")):
        os.makedirs(coco / directory, exist_ok=True)
        for img in images:
            year = "val2014" if img["id"] in VAL2014 else "train2014"
            shutil.copy(
                coco / year / f"COCO_{year}_{img['file_name']}", coco / directory / img["file_name"]
            )
    _dump(ann / "person_keypoints_train2017.json", _coco(train17_images, train17_anns))
    _dump(ann / "person_keypoints_val2017.json", _coco(val17_images, val17_anns))
    unlabeled = []
    for image_id, (height, width) in sorted(UNLABELED2017.items()):
        _jpeg(coco / "unlabeled2017" / f"{image_id:012d}.jpg", height, width, 3 + image_id)
        unlabeled.append(
            {
                "license": 1,
                "file_name": f"{image_id:012d}.jpg",
                "coco_url": "",
                "height": height,
                "width": width,
                "date_captured": "",
                "flickr_url": "",
                "id": image_id,
            }
        )
    # COCO's image-info files list all 80 categories; two are enough to show they are ignored.
    bicycle = {"supercategory": "vehicle", "id": 2, "name": "bicycle"}
    _dump(ann / "image_info_unlabeled2017.json", _coco(unlabeled, None, (PERSON, bicycle)))
    frames = root / "sports1m_frames"
    for video in ("video_a", "video_b"):
        for t in range(2):
            _jpeg(frames / video / f"frame_{t:04d}.jpg", 72, 96, 50 + t)
    return {
        "co-80": sorted(TRAIN2014),
        "co-35": CO35_IDS,
        "co-115": sorted(train17),
        "minival": sorted(val17),
        "un-120": sorted(UNLABELED2017),
        "folder": str(frames),
    }


@pytest.fixture(scope="module")
def tree(tmp_path_factory):
    root = tmp_path_factory.mktemp("coco_tree")
    make_tiny_coco_tree(root)
    return root


def run_tool(args, root, check=True, timeout=600):
    """Runs a repository script with DETECTRON2_DATASETS=root, one torch thread; returns the
    CompletedProcess (stdout and stderr merged)."""
    env = dict(os.environ, DETECTRON2_DATASETS=str(root), OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable] + [str(a) for a in args],
        cwd=str(REPO),
        env=env,
        timeout=timeout,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"{args} exited with {proc.returncode}:\n{proc.stdout[-4000:]}")
    return proc


@pytest.fixture
def prepare_coco(load_tool):
    """``prepare_coco(root, *args)`` runs datasets/prepare_coco.py's main in this process (faster
    than a subprocess; the command line itself runs in test_small_setting_pipeline) and returns
    (exit status, output)."""
    module = load_tool("prepare_coco", "datasets")

    def run(root, *args):
        stdout = io.StringIO()
        try:
            with contextlib.redirect_stdout(stdout):
                status = module.main(["--root", str(root)] + list(args))
        except SystemExit as e:  # errors exit with their message
            return 1, stdout.getvalue() + str(e.code)
        return status, stdout.getvalue()

    return run


def _load(path):
    with open(path) as f:
        return json.load(f)


# ------------------------------------------------------------------------------------------
# prepare_coco.py
# ------------------------------------------------------------------------------------------
def test_prepare_coco_writes_co35_and_co80(tree, prepare_coco):
    status, out = prepare_coco(tree)
    assert status == 0
    ann = tree / "coco" / "annotations"
    co35 = _load(ann / "person_keypoints_valminusminival2014.json")
    co80 = _load(ann / "image_info_train2014.json")
    val14 = _load(ann / "person_keypoints_val2014.json")
    train14 = _load(ann / "person_keypoints_train2014.json")
    train17 = _load(ann / "person_keypoints_train2017.json")

    # co-35: val2014 minus minival, with every annotation of those images and nothing else.
    assert [i["id"] for i in co35["images"]] == [285, 724, 776]
    assert co35["images"] == [i for i in val14["images"] if i["id"] in (285, 724, 776)]
    assert co35["annotations"] == [
        a for a in val14["annotations"] if a["image_id"] in (285, 724, 776)
    ]
    assert len(co35["annotations"]) == 1 + 0 + 2 and co35["categories"] == val14["categories"]
    # co-80: all of train2014's images, no annotations at all.
    assert co80["images"] == train14["images"] and "annotations" not in co80
    assert co80["categories"] == train14["categories"]
    # Disjoint, and together exactly co-115 (by id and by file number).
    ids35, ids80 = {i["id"] for i in co35["images"]}, {i["id"] for i in co80["images"]}
    assert not ids35 & ids80
    assert ids35 | ids80 == {i["id"] for i in train17["images"]}
    assert len(ids35) + len(ids80) == len(train17["images"]) == 9
    assert len(co35["annotations"]) + len(train14["annotations"]) == len(train17["annotations"])
    assert "wrote co-35" in out and "3 images, 3 annotations" in out
    assert "wrote co-80" in out and "6 images, 0 annotations" in out
    assert "verified: co-35 and co-80 are disjoint and together are co-115 (9 images" in out

    # Same inputs, same bytes.
    written = ("person_keypoints_valminusminival2014.json", "image_info_train2014.json")
    before = [(ann / n).read_bytes() for n in written]
    prepare_coco(tree)
    after = [(ann / n).read_bytes() for n in written]
    assert before == after


def test_prepare_coco_refuses_inconsistent_inputs(tmp_path, prepare_coco):
    make_tiny_coco_tree(tmp_path)
    ann = tmp_path / "coco" / "annotations"
    # A 2017 train file with one more image than co-35 + co-80.
    train17 = _load(ann / "person_keypoints_train2017.json")
    train17["images"].append(dict(train17["images"][0], id=999999, file_name="000000999999.jpg"))
    _dump(ann / "person_keypoints_train2017.json", train17)
    status, out = prepare_coco(tmp_path)
    assert status == 1
    assert "co-35 + co-80 is not co-115" in out and "only in 2017 (e.g. [999999])" in out
    # Without COCO 2017 val and Detectron's minival list, there is no minival to remove.
    os.remove(ann / "person_keypoints_val2017.json")
    status, out = prepare_coco(tmp_path)
    assert status == 1
    assert (
        str(ann / "person_keypoints_val2017.json") in out
        and str(ann / "instances_minival2014.json") in out
    )
    os.remove(ann / "person_keypoints_val2014.json")
    status, out = prepare_coco(tmp_path)
    assert status == 1
    assert (
        f"{ann / 'person_keypoints_val2014.json'} is missing" in out
        and "annotations_trainval2014.zip" in out
    )


def test_check_names_what_is_missing_and_where(tmp_path, prepare_coco):
    empty = tmp_path / "empty"
    empty.mkdir()
    status, out = prepare_coco(empty, "--check")
    assert status == 1
    for split in PAPER_SPLITS:  # every file and folder, at its full path
        assert f"MISSING  {split.paper_name}" in out
        assert str(empty / split.json_file) in out and str(empty / split.image_root) + os.sep in out
    assert "write it with: python datasets/prepare_coco.py" in out
    assert (
        "from COCO's image_info_unlabeled2017.zip" in out
        and "the images of COCO's unlabeled2017.zip" in out
    )
    assert "the images of COCO's train2017.zip" in out

    root = tmp_path / "tree"
    make_tiny_coco_tree(root)
    status, out = prepare_coco(root, "--check")
    assert status == 1  # co-35 and co-80 are not prepared yet
    missing = [line for line in out.splitlines() if line.startswith("MISSING")]
    assert len(missing) == 2 and all(("co-35" in m or "co-80" in m) for m in missing)
    prepare_coco(root)
    status, out = prepare_coco(
        root,
        "--check",
        "--splits",
        "co-115",
        "co-35",
        "co-80",
        "co-80 (truth)",
        "un-120",
        "minival",
        "s1m-180",
    )
    assert status == 0 and "everything is in place" in out and "MISSING" not in out
    assert "co-115         keypoints_coco_2017_train" in out
    assert "(9 images, 11 annotations; the full split has 118287)" in out
    assert "(all 9 listed images present)" in out and "(4 JPEG/PNG files)" in out

    # One image gone: its path is named.
    gone = root / "coco" / "unlabeled2017" / "000000000015.jpg"
    os.remove(gone)
    status, out = prepare_coco(root, "--check", "--splits", "un-120")
    assert status == 1
    assert f"1 of 3 images listed in coco/annotations/image_info_unlabeled2017.json: {gone}" in out


# ------------------------------------------------------------------------------------------
# Datasets
# ------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_registered_names_load_on_the_tree(tree, prepare_coco):
    """Every dataset a COCO config names loads from the tree through its registered name."""
    prepare_coco(tree)
    script = (
        "import json, dd_detectron\n"
        "from detectron2.data import DatasetCatalog\n"
        "names = ['keypoints_coco_2017_train', 'keypoints_coco_2017_val', "
        "'keypoints_coco_2014_valminusminival',\n"
        "         'coco_2014_train_unlabeled', 'keypoints_coco_2014_train', "
        "'coco_2017_unlabeled', 'sports1m_frames']\n"
        "out = {}\n"
        "for n in names:\n"
        "    d = DatasetCatalog.get(n)\n"
        "    out[n] = [sorted(r['image_id'] for r in d), "
        "sum(len(r.get('annotations', [])) for r in d),\n"
        "              all(r['file_name'].startswith(%r) for r in d)]\n"
        "print('RESULT', json.dumps(out))\n" % str(tree)
    )
    proc = run_tool(["-c", script], tree)
    out = json.loads(proc.stdout.split("RESULT ", 1)[1])
    assert out["keypoints_coco_2017_train"][:2] == [sorted(set(TRAIN2014) | set(CO35_IDS)), 11]
    assert out["keypoints_coco_2017_val"][:2] == [list(MINIVAL), 3]
    assert out["keypoints_coco_2014_valminusminival"][:2] == [CO35_IDS, 3]
    assert out["coco_2014_train_unlabeled"][:2] == [sorted(TRAIN2014), 0]
    assert out["keypoints_coco_2014_train"][:2] == [sorted(TRAIN2014), 8]
    assert out["coco_2017_unlabeled"][:2] == [sorted(UNLABELED2017), 0]
    frames = [f"video_{v}/frame_{t:04d}.jpg" for v in "ab" for t in range(2)]
    assert out["sports1m_frames"][:2] == [sorted(image_id_for(f) for f in frames), 0]
    assert all(v[2] for v in out.values())


def test_image_info_loader(tmp_path):
    data = _coco(
        [{"id": 5, "file_name": "a.jpg", "height": 10, "width": 20}],
        [{"id": 1, "image_id": 5, "bbox": [0, 0, 1, 1]}],
        (PERSON,),
    )
    _dump(tmp_path / "info.json", data)
    records = load_image_info_json(str(tmp_path / "info.json"), "/img", "x")
    # Annotations in the file are never read: an unlabeled split carries no labels.
    assert records == [{"file_name": "/img/a.jpg", "height": 10, "width": 20, "image_id": 5}]
    _dump(tmp_path / "bad.json", {"images": [{"id": 5, "file_name": "a.jpg"}]})
    with pytest.raises(ValueError, match=r"bad\.json: images\[0\] has no height, width"):
        load_image_info_json(str(tmp_path / "bad.json"), "/img")
    with pytest.raises(FileNotFoundError, match=r"missing\.json .*'y'.*prepare_coco"):
        load_image_info_json(
            str(tmp_path / "missing.json"), "/img", "y", " Write it with: prepare_coco.py"
        )
    # The registered unlabeled splits say where their missing file comes from (registered again
    # under other names at an empty root: the real names may point at a real COCO tree).
    for paper_name, hint in (
        ("co-80", "Write it with: python datasets/prepare_coco.py"),
        ("un-120", "It is in COCO's image_info_unlabeled2017.zip"),
    ):
        split = dataclasses.replace(
            get_paper_split(paper_name), dataset_name=f"dd_test_{uuid.uuid4().hex[:8]}"
        )
        register_coco_unlabeled(str(tmp_path / "empty_root"), [split])
        with pytest.raises(FileNotFoundError, match=re.escape(hint)):
            DatasetCatalog.get(split.dataset_name)
    meta = MetadataCatalog.get("coco_2017_unlabeled")
    assert list(meta.thing_classes) == ["person"] and list(meta.keypoint_names) == list(
        COCO_PERSON_KEYPOINT_NAMES
    )


def _write_folder(folder):
    """A folder of the kinds of files a user's folder holds; returns {relative path: (h, w)} of
    the images that must be listed."""
    expected = {}
    for rel, (h, w), fmt in (
        ("b/clip2/0001.jpg", (40, 60), "JPEG"),
        ("a/0002.PNG", (30, 50), "PNG"),
        ("a/0001.jpeg", (20, 36), "JPEG"),
        ("top.jpg", (24, 32), "JPEG"),
    ):
        path = folder / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (w, h), (10, 20, 30)).save(path, fmt)
        expected[rel] = (h, w)
    # EXIF orientation 6 (rotate 90): stored 40 wide x 24 high, read by detectron2 as 24 x 40.
    exif = Image.Exif()
    exif[274] = 6
    Image.new("RGB", (40, 24)).save(folder / "b" / "rotated.jpg", "JPEG", exif=exif.tobytes())
    expected["b/rotated.jpg"] = (40, 24)
    (folder / "notes.txt").write_text("not an image")
    (folder / "broken.jpg").write_bytes(b"this is not a JPEG")
    (folder / "a" / "._0001.jpeg").write_bytes(b"\x00\x05\x16\x07 AppleDouble")  # hidden: skipped
    (folder / ".cache").mkdir()
    Image.new("RGB", (8, 8)).save(folder / ".cache" / "thumb.jpg")  # hidden folder: skipped
    return expected


def test_image_folder_dataset(tmp_path, caplog):
    folder = tmp_path / "my images"
    expected = _write_folder(folder)
    assert list_image_files(str(folder)) == sorted(list(expected) + ["broken.jpg"])
    name = f"dd_test_image_folder_{uuid.uuid4().hex[:8]}"
    register_image_folder(name, str(folder))
    with caplog.at_level(logging.WARNING, logger="dd_detectron.data.datasets.image_folder"):
        records = DatasetCatalog.get(name)
    # The unreadable file is left out, and the warning names it and says why.
    assert (
        "1 of 6 files are not readable images" in caplog.text
        and "broken.jpg (UnidentifiedImageError" in caplog.text
    )
    assert [
        os.path.relpath(r["file_name"], folder).replace(os.sep, "/") for r in records
    ] == sorted(expected)
    for r in records:
        rel = os.path.relpath(r["file_name"], folder).replace(os.sep, "/")
        assert os.path.isabs(r["file_name"]) and (r["height"], r["width"]) == expected[rel]
        assert r["image_id"] == image_id_for(rel) and 0 <= r["image_id"] < 2**53
    # The sizes are those detectron2's reader gives (EXIF applied), which the annotation stage
    # checks.
    from detectron2.data.detection_utils import read_image

    for r in records:
        assert read_image(r["file_name"]).shape[:2] == (r["height"], r["width"])
    assert read_image_size(str(folder / "b" / "rotated.jpg")) == (40, 24)

    # Ids do not move when files are added, nor when the folder moves.
    Image.new("RGB", (16, 16)).save(folder / "a" / "0000.jpg")
    moved = tmp_path / "moved"
    shutil.copytree(folder, moved)
    again = {
        os.path.relpath(r["file_name"], moved): r["image_id"] for r in load_image_folder(str(moved))
    }
    assert {
        os.path.relpath(r["file_name"], folder): r["image_id"] for r in records
    }.items() <= again.items()
    assert len(again) == len(records) + 1

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_image_folder(str(tmp_path / "nope"))
    (tmp_path / "no_images").mkdir()
    with pytest.raises(ValueError, match="has no readable image"):
        load_image_folder(str(tmp_path / "no_images"))


def test_folder_names_in_config(tmp_path, monkeypatch):
    folder = tmp_path / "frames"
    _write_folder(folder)
    cfg = get_cfg()
    add_dd_config(cfg)
    entry = FOLDER_PREFIX + str(folder)
    cfg.DD.ANNOTATE.DATASETS = (entry, "coco_2017_unlabeled")
    assert register_path_datasets(cfg) == [entry]
    assert register_path_datasets(cfg) == []  # registered once
    assert len(DatasetCatalog.get(entry)) == 5
    assert MetadataCatalog.get(entry).image_root == str(folder)
    # A relative path is taken from the working directory (a unique one: the catalog is global).
    relative = f"folder:frames/b_{uuid.uuid4().hex[:8]}"
    shutil.copytree(folder / "b", tmp_path / relative[len(FOLDER_PREFIX) :])
    monkeypatch.chdir(tmp_path)
    cfg.DD.ANNOTATE.DATASETS = (relative,)
    register_path_datasets(cfg)
    monkeypatch.undo()
    listed = sorted(os.path.basename(r["file_name"]) for r in DatasetCatalog.get(relative))
    assert listed == ["0001.jpg", "rotated.jpg"]
    cfg.DD.ANNOTATE.DATASETS = ("folder:" + str(tmp_path / "absent"),)
    with pytest.raises(
        FileNotFoundError, match=r"DD\.ANNOTATE\.DATASETS: 'folder:.*absent' names the folder"
    ):
        register_path_datasets(cfg)


# ------------------------------------------------------------------------------------------
# Configs
# ------------------------------------------------------------------------------------------
def load_config(path):
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(str(path))
    return cfg


# setting -> (teacher, annotate, student) file names
SETTINGS = {
    "co35-co80": (
        "teacher_R50-FPN_90k_co35.yaml",
        "annotate_R50-FPN_90k_co35-co80.yaml",
        "student_R50-FPN_360k_co35-co80.yaml",
    ),
    "co115-un120": (
        "teacher_R50-FPN_130k_co115.yaml",
        "annotate_R50-FPN_130k_co115-un120.yaml",
        "student_R50-FPN_360k_co115-un120.yaml",
    ),
    "co115-folder": (
        "teacher_R50-FPN_130k_co115.yaml",
        "annotate_R50-FPN_130k_co115-folder.yaml",
        "student_R50-FPN_360k_co115-folder.yaml",
    ),
}
# What each setting labels and learns from, by registered name.
SETTING_DATA = {
    "co35-co80": (
        "keypoints_coco_2014_valminusminival",
        "coco_2014_train_unlabeled",
        "dd_coco_co80_generated",
    ),
    "co115-un120": ("keypoints_coco_2017_train", "coco_2017_unlabeled", "dd_coco_un120_generated"),
    "co115-folder": (
        "keypoints_coco_2017_train",
        "sports1m_frames",
        "dd_sports1m_frames_generated",
    ),
}


def test_every_coco_config_is_part_of_a_setting():
    on_disk = {p.name for p in COCO_CONFIGS.glob("*.yaml")}
    pipelines = {f"pipeline_R50-FPN_{setting}.yaml" for setting in SETTINGS}
    assert on_disk == {name for files in SETTINGS.values() for name in files} | pipelines


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_coco_pipeline_config_runs_the_setting(setting, monkeypatch):
    """run_pipeline's plan for a setting: its teacher, the labels of its unlabeled split, its
    student."""
    from dd_detectron.pipeline import build_stages

    monkeypatch.chdir(COCO_CONFIGS.parent.parent)
    cfg = load_config(COCO_CONFIGS / f"pipeline_R50-FPN_{setting}.yaml")
    teacher, _, student = SETTINGS[setting]
    _, unlabeled, _ = SETTING_DATA[setting]
    stages = {s.name.split("/")[1]: s for s in build_stages(cfg, "configs/COCO-Keypoints")}
    assert list(stages) == ["teacher", "labels_multiview", "student"]
    assert stages["teacher"].args[:2] == ["--config-file", f"configs/COCO-Keypoints/{teacher}"]
    annotate_args = stages["labels_multiview"].args
    assert annotate_args[annotate_args.index("DD.ANNOTATE.DATASETS") + 1] == repr((unlabeled,))
    assert annotate_args[annotate_args.index("TEST.AUG.ENABLED") + 1] == "True"
    assert stages["student"].args[:2] == ["--config-file", f"configs/COCO-Keypoints/{student}"]


@pytest.mark.parametrize("setting", sorted(SETTINGS))
def test_coco_setting_configs(setting):
    teacher, annotate, student = (load_config(COCO_CONFIGS / name) for name in SETTINGS[setting])
    labeled, unlabeled, generated = SETTING_DATA[setting]
    for cfg in (teacher, annotate, student):
        # R-50-FPN from detectron2's model-zoo ImageNet weights (the annotate config loads the
        # teacher's instead), evaluated on minival, with the paper's views.
        assert (
            cfg.MODEL.BACKBONE.NAME == "build_resnet_fpn_backbone" and cfg.MODEL.RESNETS.DEPTH == 50
        )
        assert cfg.MODEL.KEYPOINT_ON and cfg.DATASETS.TEST == ("keypoints_coco_2017_val",)
        assert tuple(cfg.TEST.AUG.MIN_SIZES) == tuple(range(400, 1201, 100)) and cfg.TEST.AUG.FLIP
        assert cfg.DATASETS.TRAIN == (labeled,)
        assert cfg.SOLVER.IMS_PER_BATCH == 16
        for name in cfg.DATASETS.TRAIN + cfg.DATASETS.TEST:
            assert name in DatasetCatalog.list(), name
    assert (
        teacher.MODEL.WEIGHTS
        == student.MODEL.WEIGHTS
        == "detectron2://ImageNetPretrained/MSRA/R-50.pkl"
    )
    # The annotation stage loads the teacher this setting trains, and labels the unlabeled split.
    assert annotate.MODEL.WEIGHTS == f"{teacher.OUTPUT_DIR}/model_final.pth"
    assert annotate.TEST.AUG.ENABLED and annotate.DD.ANNOTATE.DATASETS == (unlabeled,)
    assert annotate.DD.ANNOTATE.SCORE_THRESH == annotate.DD.ANNOTATE.KEYPOINT_THRESH == "auto"
    assert unlabeled in DatasetCatalog.list()
    # The student learns from the labels of that split, at 6 labeled : 4 generated, longer.
    assert (
        student.DD.STUDENT.GENERATED_DATASETS == (generated,) and generated in DatasetCatalog.list()
    )
    assert student.DD.STUDENT.LABELED_FRACTION == 0.6 and student.DD.STUDENT.INIT == "weights"
    assert not teacher.DD.STUDENT.GENERATED_DATASETS
    assert student.SOLVER.MAX_ITER > teacher.SOLVER.MAX_ITER
    for cfg in (teacher, student):
        assert max(cfg.SOLVER.STEPS) < cfg.SOLVER.MAX_ITER


# ------------------------------------------------------------------------------------------
# The pipeline's tools on the tiny tree, with a tiny model
# ------------------------------------------------------------------------------------------
TINY_MODEL = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.BACKBONE.NAME",
    "build_narrow_resnet_fpn_backbone",
    "MODEL.RESNETS.DEPTH",
    "18",
    "MODEL.RESNETS.STEM_OUT_CHANNELS",
    "8",
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    "8",
    "MODEL.FPN.OUT_CHANNELS",
    "16",
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS",
    "(16, 16)",
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    "32",
    "MODEL.PIXEL_STD",
    "[57.0, 57.0, 57.0]",
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    "50",
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    "0.0",
    "TEST.DETECTIONS_PER_IMAGE",
    "4",
    "INPUT.MIN_SIZE_TRAIN",
    "(64,)",
    "INPUT.MAX_SIZE_TRAIN",
    "128",
    "INPUT.MIN_SIZE_TEST",
    "64",
    "INPUT.MAX_SIZE_TEST",
    "128",
    "TEST.AUG.MIN_SIZES",
    "(56, 72)",
    "TEST.AUG.MAX_SIZE",
    "160",
    "DATALOADER.NUM_WORKERS",
    "0",
    "SEED",
    "0",  # detectron2's default (-1) draws a new seed every run
]


def _tiny_cfg(config_name):
    cfg = load_config(COCO_CONFIGS / config_name)
    cfg.merge_from_list(TINY_MODEL + ["MODEL.WEIGHTS", ""])
    return cfg


@pytest.fixture(scope="module")
def tiny_teacher(tmp_path_factory):
    """Random weights of the tiny model (the annotation stage needs a checkpoint file)."""
    path = tmp_path_factory.mktemp("tiny_teacher") / "model_final.pth"
    torch.manual_seed(0)
    torch.save(build_model(_tiny_cfg("teacher_R50-FPN_130k_co115.yaml")).state_dict(), path)
    return path


def annotate_tool(config_name, root, weights, output, *opts):
    return run_tool(
        [
            "tools/annotate_net.py",
            "--config-file",
            f"configs/COCO-Keypoints/{config_name}",
            "--output",
            output,
        ]
        + TINY_MODEL
        + ["MODEL.WEIGHTS", weights]
        + list(opts),
        root,
    )


@pytest.mark.slow
def test_annotate_un120_image_info(tree, tiny_teacher, tmp_path):
    out = tmp_path / "annotate_un120"
    proc = annotate_tool("annotate_R50-FPN_130k_co115-un120.yaml", tree, tiny_teacher, out)
    labels = _load(out / "person_keypoints_generated.json")
    # Every un-120 image, at its own size, under its COCO id.
    assert sorted(i["id"] for i in labels["images"]) == sorted(UNLABELED2017)
    for img in labels["images"]:
        assert (img["height"], img["width"]) == UNLABELED2017[img["id"]][:2]
        assert img["file_name"] == str(tree / "coco" / "unlabeled2017" / f"{img['id']:012d}.jpg")
    assert [c["name"] for c in labels["categories"]] == ["person"]
    stats = _load(out / "annotation_stats.json")
    # "auto" targets co-115's instances per image: 10 non-crowd people on 9 images.
    assert stats["labeled_data"]["instances_per_image"] == pytest.approx(10 / 9)
    assert stats["score_threshold"]["auto"] and stats["failed_images"] == []
    assert "Annotation results" in proc.stdout


@pytest.mark.slow
def test_annotate_image_folder(tree, tiny_teacher, tmp_path):
    """The folder setting's config, on the builtin folder and on a folder named by path."""
    out = tmp_path / "annotate_folder"
    annotate_tool("annotate_R50-FPN_130k_co115-folder.yaml", tree, tiny_teacher, out)
    labels = _load(out / "person_keypoints_generated.json")
    frames = sorted(f"video_{v}/frame_{t:04d}.jpg" for v in "ab" for t in range(2))
    assert sorted(i["id"] for i in labels["images"]) == sorted(image_id_for(f) for f in frames)
    assert all(i["file_name"].startswith(str(tree / "sports1m_frames")) for i in labels["images"])

    own = tmp_path / "own images"
    expected = _write_folder(own)
    out = tmp_path / "annotate_own"
    annotate_tool(
        "annotate_R50-FPN_130k_co115-folder.yaml",
        tree,
        tiny_teacher,
        out,
        "DD.ANNOTATE.DATASETS",
        f"('folder:{own}',)",
    )
    labels = _load(out / "person_keypoints_generated.json")
    by_id = {i["id"]: i for i in labels["images"]}
    assert sorted(by_id) == sorted(image_id_for(rel) for rel in expected)
    for rel, (h, w) in expected.items():
        img = by_id[image_id_for(rel)]
        assert img["file_name"] == str(own / rel) and (img["height"], img["width"]) == (h, w)


@pytest.mark.slow
def test_small_setting_pipeline(tree, tmp_path):
    """co-35 + co-80 with the setting's three configs and a tiny model: teacher, annotation of
    co-80 by the teacher's checkpoint, student on co-35 + the labels under their builtin name."""
    run_tool([PREPARE], tree)  # the command line, once
    # A small learning rate: two steps at the config's 0.02 from random weights can diverge to a
    # model that detects nothing, and this test counts the detections.
    train_opts = TINY_MODEL + [
        "MODEL.WEIGHTS",
        "",
        "SOLVER.MAX_ITER",
        "2",
        "SOLVER.STEPS",
        "()",
        "SOLVER.WARMUP_ITERS",
        "0",
        "SOLVER.BASE_LR",
        "0.001",
        "DATASETS.TEST",
        "()",
    ]
    teacher_dir = tmp_path / "teacher"
    run_tool(
        [
            "tools/train_net.py",
            "--config-file",
            "configs/COCO-Keypoints/teacher_R50-FPN_90k_co35.yaml",
        ]
        + train_opts
        + ["SOLVER.IMS_PER_BATCH", "2", "OUTPUT_DIR", teacher_dir],
        tree,
    )
    weights = teacher_dir / "model_final.pth"
    assert weights.is_file()

    out = tmp_path / "annotate"
    run_tool(
        [
            "tools/annotate_net.py",
            "--config-file",
            "configs/COCO-Keypoints/annotate_R50-FPN_90k_co35-co80.yaml",
            "--output",
            out,
            "--truth",
            "keypoints_coco_2014_train",
        ]
        + TINY_MODEL
        + [
            "MODEL.WEIGHTS",
            weights,
            "DD.ANNOTATE.SCORE_THRESH",
            "0.0",
            "DD.ANNOTATE.KEYPOINT_THRESH",
            "-1e9",
        ],
        tree,
    )
    labels = _load(out / "person_keypoints_generated.json")
    assert sorted(i["id"] for i in labels["images"]) == sorted(TRAIN2014)
    assert len(labels["annotations"]) == 4 * len(TRAIN2014)  # thresholds open: all 4 detections
    # co-80's true labels measure the labels' quality, over the same 6 images.
    quality = _load(out / "label_quality.json")
    assert quality["images"] == len(TRAIN2014) and "AP" in quality["keypoints"]

    # The student config's generated dataset is a builtin name: put the labels at its path.
    generated = tree / "dd_generated" / "coco_co80_keypoints.json"
    generated.parent.mkdir(exist_ok=True)
    shutil.copy(out / "person_keypoints_generated.json", generated)
    student_dir = tmp_path / "student"
    student_config = "configs/COCO-Keypoints/student_R50-FPN_360k_co35-co80.yaml"
    proc = run_tool(
        ["tools/train_net.py", "--config-file", student_config]
        + train_opts
        + ["SOLVER.IMS_PER_BATCH", "5", "OUTPUT_DIR", student_dir],
        tree,
    )
    assert (student_dir / "model_final.pth").is_file()
    # 5 images per batch at 0.6: 3 labeled + 2 generated, logged by the student's loader.
    metrics = [json.loads(line) for line in (student_dir / "metrics.json").read_text().splitlines()]
    assert [(m["dd/labeled_images"], m["dd/generated_images"]) for m in metrics] == [(3, 2)]
    assert "Student training" in proc.stdout
