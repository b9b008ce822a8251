"""The dataset front door: builtin datasets under one root, dataset names that are paths, and
datasets made ready before their files are read."""

import json
import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from support import register_toy_labeled, write_toy_keypoints

from dd_detectron import add_dd_config
from dd_detectron.data.datasets import (
    BUILTIN_GENERATED,
    BUILTIN_IMAGE_FOLDERS,
    FOLDER_PREFIX,
    PAPER_SPLITS,
    datasets_root,
    ensure_dataset_ready,
    register_path_datasets,
)
from dd_detectron.data.datasets.coco import DD_DETECTRON
from dd_detectron.data.synthetic import (
    DEMO_SYNTHETIC_SPLITS,
    SYNTHETIC_SPLITS,
    TINY_SYNTHETIC_SPLITS,
    split_files,
)

REPO = Path(__file__).resolve().parent.parent


def test_datasets_root(monkeypatch, tmp_path):
    monkeypatch.delenv("DETECTRON2_DATASETS", raising=False)
    assert datasets_root() == "datasets"
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.setenv("DETECTRON2_DATASETS", "~/data")
    assert datasets_root() == str(tmp_path / "data")


def _expected_builtin(root):
    """name -> [json_file, image_root] of every builtin dataset, from the family tables."""
    expected = {}
    for spec in SYNTHETIC_SPLITS + TINY_SYNTHETIC_SPLITS + DEMO_SYNTHETIC_SPLITS:
        files = split_files(spec, root)
        expected[spec.name] = [files.json_file, files.image_root]
        if files.truth_json_file is not None:
            expected[spec.name + "_truth"] = [files.truth_json_file, files.image_root]
    for split in PAPER_SPLITS:
        if split.registered_by == DD_DETECTRON:
            expected[split.dataset_name] = [
                os.path.join(root, split.json_file),
                os.path.join(root, split.image_root),
            ]
    for split in BUILTIN_IMAGE_FOLDERS:
        expected[split.name] = [None, os.path.join(root, split.folder)]
    for split in BUILTIN_GENERATED:
        expected[split.name] = [os.path.join(root, split.json_file), ""]
    return expected


@pytest.mark.slow
def test_builtin_datasets_lie_under_one_root(tmp_path):
    """Importing dd_detectron registers exactly the tables' names, every one under
    $DETECTRON2_DATASETS as datasets_root() reads it ("~" expanded)."""
    script = (
        "import json\n"
        "from detectron2.data import DatasetCatalog, MetadataCatalog\n"
        "before = set(DatasetCatalog.list())\n"
        "import dd_detectron\n"
        "added = set(DatasetCatalog.list()) - before\n"
        "paths = {n: [MetadataCatalog.get(n).get(k) for k in ('json_file', 'image_root')]\n"
        "         for n in added}\n"
        "print('RESULT', json.dumps(paths))\n"
    )
    env = dict(os.environ, HOME=str(tmp_path), DETECTRON2_DATASETS="~/data")
    proc = subprocess.run(
        [sys.executable, "-c", script],
        cwd=str(REPO),
        env=env,
        timeout=300,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout[-4000:]
    registered = json.loads(proc.stdout.split("RESULT ", 1)[1])
    expected = _expected_builtin(str(tmp_path / "data"))
    assert len(expected) == 16 + 2 + 1 + 5
    assert registered == expected


def _cfg(**names):
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.MODEL.KEYPOINT_ON = True  # a ".json" then names keypoint labels (generated.py)
    for key, value in names.items():
        cfg.merge_from_list([key.replace("__", "."), tuple(value)])
    return cfg


def test_path_datasets_are_registered_under_the_name_written(tmp_path, monkeypatch):
    # Unique relative names: the catalog is global to the test process.
    tag = uuid.uuid4().hex[:8]
    json_file = write_toy_keypoints(str(tmp_path / f"labels_{tag}"), 4, seed=2)
    json_name = os.path.relpath(json_file, tmp_path)
    folder_name = f"{FOLDER_PREFIX}labels_{tag}/images"
    cfg = _cfg(
        DATASETS__TRAIN=["synthetic_kp_tiny_labeled"],
        DATASETS__TEST=["no_such_dataset"],  # not a path: left to whoever loads it
        DD__ANNOTATE__DATASETS=[folder_name],
        DD__STUDENT__GENERATED_DATASETS=[json_name],
    )
    monkeypatch.chdir(tmp_path)
    assert register_path_datasets(cfg) == [folder_name, json_name]
    assert register_path_datasets(cfg) == []  # once only
    monkeypatch.chdir(REPO)
    # Relative paths were taken from the working directory at registration.
    assert MetadataCatalog.get(folder_name).image_root == str(tmp_path / f"labels_{tag}" / "images")
    assert MetadataCatalog.get(json_name).json_file == json_file
    assert len(DatasetCatalog.get(folder_name)) == 4
    records = DatasetCatalog.get(json_name)
    assert [r["image_id"] for r in records] == [1, 2, 3, 4]
    assert all(len(a["keypoints"]) == 51 for r in records for a in r["annotations"])
    assert "no_such_dataset" not in DatasetCatalog.list()
    # The same relative name read from another working directory names other data: an error.
    os.makedirs(tmp_path / "elsewhere" / f"labels_{tag}" / "images")
    monkeypatch.chdir(tmp_path / "elsewhere")
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"DD.ANNOTATE.DATASETS: {folder_name!r} names the folder "
            f"{tmp_path / 'elsewhere' / f'labels_{tag}' / 'images'}, but is already registered for "
            f"{tmp_path / f'labels_{tag}' / 'images'}."
        ),
    ):
        register_path_datasets(cfg)


@pytest.mark.parametrize(
    "key",
    ["DATASETS.TRAIN", "DATASETS.TEST", "DD.ANNOTATE.DATASETS", "DD.STUDENT.GENERATED_DATASETS"],
)
def test_path_dataset_errors_name_the_key_and_the_path(tmp_path, key):
    for name, kind in (
        (FOLDER_PREFIX + str(tmp_path / "absent"), "folder"),
        (str(tmp_path / "absent.json"), "file"),
    ):
        cfg = _cfg(**{key.replace(".", "__"): [name]})
        message = f"{key}: {name!r} names the {kind} {tmp_path / 'absent'}"
        with pytest.raises(FileNotFoundError, match=re.escape(message)):
            register_path_datasets(cfg)
        assert name not in DatasetCatalog.list()


def test_ensure_dataset_ready_reads_only_what_is_missing(tmp_path):
    name = register_toy_labeled(str(tmp_path), 3, seed=1)
    metadata = MetadataCatalog.get(name)
    assert os.path.isfile(metadata.json_file)
    # The file exists and the caller does not need category ids: nothing is read.
    assert ensure_dataset_ready(name, category_ids=False) is metadata
    assert metadata.get("thing_dataset_id_to_contiguous_id") is None
    # COCO-style datasets learn their category ids (COCO person: 1) when loaded.
    ensure_dataset_ready(name)
    assert metadata.thing_dataset_id_to_contiguous_id == {1: 0}
    with pytest.raises(KeyError, match="not registered"):
        ensure_dataset_ready(f"dd_test_unregistered_{uuid.uuid4().hex[:8]}")
