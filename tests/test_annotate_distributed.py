"""The annotation stage on the machines users run it on, emulated on the CPU: a GPU
visible to a CPU job, several processes, a resume with lower-memory settings, a shared
filesystem whose listings lag, an image saved twice, the process-group timeout on both paths.
"""

import argparse
import json
import logging
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.distributed as dist
from conftest import REPO
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.modeling import build_model
from support import (
    KEYPOINT_META,
)
from support import annotate_cfg as tiny_cfg
from support import child_env, crash_after
from support import fake_keypoint_instances as _fake_instances
from support import free_port
from support import make_keypoint_dataset as make_dataset
from support import read_bytes, spawn_annotation, tiny_model, torchrun_env

from dd_detectron.annotation import OUTPUT_JSON, STATS_JSON, LabeledStats, annotate
from dd_detectron.annotation.labels import LabelingRule, make_labels
from dd_detectron.annotation.progress import PredictionChunk, ProgressStore
from dd_detectron.engine import launch as dd_launch

K = 17

# Bit-identical detections across runs and processes need the same thread count.
pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """A labeled set (1 or 2 persons per image) and an unlabeled set of 4 images."""
    root = tmp_path_factory.mktemp("annotate_dist_data")
    labeled = make_dataset(str(root / "labeled"), 4, seed=1, annotations_per_image=[1, 2, 1, 2])
    unlabeled = make_dataset(str(root / "unlabeled"), 4, seed=3)
    return labeled, unlabeled


# ------------------------------------------------------------------------------------------
# Backend, device and timeout of a job's processes
# ------------------------------------------------------------------------------------------
def _pretend_one_gpu(monkeypatch_like):
    """torch.cuda as on a workstation with one GPU: GPU 1 does not exist."""

    def set_device(index):
        raise RuntimeError(f"CUDA error: invalid device ordinal {index}")

    monkeypatch_like(torch.cuda, "is_available", lambda: True)
    monkeypatch_like(torch.cuda, "device_count", lambda: 1)
    monkeypatch_like(torch.cuda, "set_device", set_device)


def _gpu_visible_worker(rank, world_size, port, state_path, files, names, out):
    os.environ.update(torchrun_env(rank, world_size, port))
    torch.set_num_threads(1)
    cuda_functions = ("is_available", "device_count", "set_device")
    saved = {name: getattr(torch.cuda, name) for name in cuda_functions}
    _pretend_one_gpu(setattr)
    dd_launch.init_distributed_from_env("cpu")  # MODEL.DEVICE of every tiny config
    for name, value in saved.items():  # the rest of the run must not touch CUDA either
        setattr(torch.cuda, name, value)
    backend = dist.get_backend()

    from dd_detectron.annotation import engine

    calls = []
    real_images_to_label, real_listdir = engine.images_to_label, os.listdir
    engine.images_to_label = lambda names: (calls.append(1), real_images_to_label(names))[1]

    def listdir(path="."):
        # Only rank 0 may decide from a listing of progress/ (another rank's can lag behind).
        if rank != 0 and os.path.basename(str(path).rstrip("/")) == "progress":
            raise AssertionError(f"rank {rank} listed {path}")
        return real_listdir(path)

    os.listdir = listdir
    for name, (json_file, root) in zip(names, files):
        register_coco_instances(name, KEYPOINT_META, json_file, root)
    cfg = tiny_cfg(*names)
    model = build_model(cfg).eval()
    model.load_state_dict(torch.load(state_path))
    annotate(cfg, model, out)
    os.listdir = real_listdir
    with open(os.path.join(out, f"rank{rank}.json"), "w") as f:
        json.dump({"backend": backend, "images_to_label_calls": len(calls)}, f)
    dist.barrier()
    os._exit(0)  # as in test_annotate's gloo worker: gloo's teardown can abort a finished worker


@pytest.mark.slow
def test_cpu_job_with_a_visible_gpu_runs_on_gloo_and_rank0_decides(data, tmp_path):
    """One visible GPU, MODEL.DEVICE cpu, 2 processes: the job runs on gloo on the CPU and
    rank 0 alone decides what is left to label."""
    labeled, unlabeled = data
    cfg = tiny_cfg(labeled, unlabeled)
    model = tiny_model(cfg)
    single = str(tmp_path / "single")
    annotate(cfg, model, single)
    out = str(tmp_path / "two")
    spawn_annotation(_gpu_visible_worker, model, [labeled, unlabeled], out, tmp_path)
    ranks = [json.loads(read_bytes(os.path.join(out, f"rank{r}.json"))) for r in range(2)]
    # gloo on both; the image list was built once, on rank 0.
    assert ranks == [
        {"backend": "gloo", "images_to_label_calls": 1},
        {"backend": "gloo", "images_to_label_calls": 0},
    ]
    for name in (OUTPUT_JSON, STATS_JSON):
        assert read_bytes(os.path.join(out, name)) == read_bytes(os.path.join(single, name))


def test_cuda_with_more_processes_than_gpus_fails_at_once(monkeypatch):
    _pretend_one_gpu(monkeypatch.setattr)
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("LOCAL_RANK", "0")
    monkeypatch.setenv("LOCAL_WORLD_SIZE", "2")

    def never(*args, **kwargs):
        raise AssertionError("must fail before waiting for the other processes")

    monkeypatch.setattr(dist, "init_process_group", never)
    with pytest.raises(RuntimeError, match=r"2 local processes .* 1 GPUs are visible"):
        dd_launch.init_distributed_from_env("cuda")


def test_both_paths_set_the_process_group_timeout(monkeypatch):
    """The process-group timeout reaches both start paths: init_process_group under torchrun,
    detectron2's launch otherwise, and on both detectron2's gloo group for Python objects."""
    timeout = dd_launch.PROCESS_GROUP_TIMEOUT
    assert timeout.total_seconds() >= 6 * 3600
    args = argparse.Namespace(num_gpus=1, num_machines=1, machine_rank=0, dist_url="auto")
    launched, ran = {}, []
    monkeypatch.setattr(
        dd_launch, "detectron2_launch", lambda main, n, **kw: launched.update(kw, main=main)
    )
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE"):
        monkeypatch.delenv(key, raising=False)
    dd_launch.launch_or_join(ran.append, args, device="cpu")
    assert launched["timeout"] == timeout and launched["args"] == (args,)
    launched["main"](args)  # what every launched process runs: main, with the timeouts
    assert ran == [args]

    # torchrun's variables for a job of one process: a real gloo group, joined in this process.
    for key, value in torchrun_env(0, 1, free_port()).items():
        monkeypatch.setenv(key, value)
    seen, exited = {}, []
    real_init = dist.init_process_group

    def spy(*a, **kw):
        seen.update(kw)
        return real_init(*a, **kw)

    monkeypatch.setattr(dist, "init_process_group", spy)
    monkeypatch.setattr(dd_launch, "_exit_now", lambda: exited.append(True))
    dd_launch.launch_or_join(ran.append, args, device="cpu")
    assert seen["timeout"] == timeout and seen["backend"] == "gloo"
    assert ran == [args, args] and exited == [True] and not dist.is_initialized()


def test_detectron2_object_collectives_get_the_timeout_on_nccl(monkeypatch):
    """detectron2 makes its own gloo group for comm.gather with torch's 30 min default; on an
    NCCL job (emulated: 2 processes, NCCL backend) it gets PROCESS_GROUP_TIMEOUT instead."""
    from detectron2.utils import comm

    monkeypatch.setattr(comm, "_get_global_gloo_group", comm._get_global_gloo_group)  # restored
    monkeypatch.setattr(dist, "is_initialized", lambda: True)
    monkeypatch.setattr(dist, "get_backend", lambda *a: "nccl")
    monkeypatch.setattr(comm, "get_world_size", lambda: 2)
    made = []
    monkeypatch.setattr(dist, "new_group", lambda **kw: made.append(kw) or "gloo-group")
    dd_launch.use_gloo_group_timeout()
    assert made == [{"backend": "gloo", "timeout": dd_launch.PROCESS_GROUP_TIMEOUT}]
    assert comm._get_global_gloo_group() == "gloo-group"


# ------------------------------------------------------------------------------------------
# Resume and merge
# ------------------------------------------------------------------------------------------
def _coco(path):
    coco = json.loads(read_bytes(path))
    return coco["images"], coco["annotations"]


@pytest.mark.slow
def test_resume_with_memory_only_settings_is_accepted(data, tmp_path, caplog):
    """After an out-of-memory, resume with lower-memory settings (the
    fixture's config: CACHE_FEATURES True, VIEW_BATCH_SIZE 2)."""
    labeled, unlabeled = data
    cfg = tiny_cfg(labeled, unlabeled)
    reference = str(tmp_path / "reference")
    annotate(cfg, tiny_model(cfg), reference)

    crashed = str(tmp_path / "crashed")
    model = tiny_model(cfg)
    handle, _ = crash_after(model, 2 * 2)  # 2 backbone passes (view pairs) per image
    with pytest.raises(RuntimeError, match="simulated crash"):
        annotate(cfg, model, crashed)
    handle.remove()
    assert ProgressStore(os.path.join(crashed, "progress")).finished_image_ids() == {100, 101}
    # As an earlier version saved it: with the memory settings in the fingerprint.
    saved_path = os.path.join(crashed, "progress", ProgressStore.FINGERPRINT)
    saved = json.loads(read_bytes(saved_path))
    saved["DD.TTA"].update(CACHE_FEATURES=True, VIEW_BATCH_SIZE=2)
    with open(saved_path, "w") as f:
        json.dump(saved, f)

    # Features recomputed instead of cached: the same detections, so the same files.
    out = str(tmp_path / "no_cache")
    shutil.copytree(crashed, out)
    _, calls = crash_after(model, 10**6)
    with caplog.at_level(logging.WARNING, logger="dd_detectron.annotation.engine"):
        annotate(tiny_cfg(labeled, unlabeled, "DD.TTA.CACHE_FEATURES", False), model, out)
    assert len(calls) == 2 * 2 * 2  # the 2 images left: 2 view pairs, each 2 backbone passes
    assert "float rounding" not in caplog.text
    for name in (OUTPUT_JSON, STATS_JSON):
        assert read_bytes(os.path.join(out, name)) == read_bytes(os.path.join(reference, name))

    # Both, one view at a time: accepted; the same labels up to float rounding.
    out = str(tmp_path / "low_memory")
    shutil.copytree(crashed, out)
    _, calls = crash_after(model, 10**6)
    low = tiny_cfg(labeled, unlabeled, "DD.TTA.CACHE_FEATURES", False, "DD.TTA.VIEW_BATCH_SIZE", 1)
    with caplog.at_level(logging.WARNING, logger="dd_detectron.annotation.engine"):
        annotate(low, model, out)
    # The first run's memory settings are on record: the log says what may round differently.
    assert "DD.TTA.VIEW_BATCH_SIZE 1 (its first run: 2)" in caplog.text
    assert len(calls) == 2 * 4 * 2  # 4 views one at a time, 2 passes each
    (images, got), (ref_images, expected) = _coco(os.path.join(out, OUTPUT_JSON)), _coco(
        os.path.join(reference, OUTPUT_JSON)
    )
    assert images == ref_images and len(got) == len(expected) > 0
    for a, b in zip(got, expected):
        for key in ("image_id", "id", "num_keypoints"):
            assert a[key] == b[key]
        assert a["keypoints"][2::3] == b["keypoints"][2::3]
        np.testing.assert_allclose(a["keypoints"], b["keypoints"], rtol=0, atol=1e-3)
        np.testing.assert_allclose(a["bbox"], b["bbox"], rtol=0, atol=2e-3)
        assert a["score"] == pytest.approx(b["score"], abs=1e-5)


def test_a_lagging_listing_still_merges_every_chunk(data, tmp_path, monkeypatch):
    """progress/ listed on a shared filesystem shows only what was there at
    the first listing (an NFS client's cached listing); the chunks written since still count."""
    labeled, unlabeled = data
    cfg = tiny_cfg(labeled, unlabeled)
    reference = str(tmp_path / "reference")
    annotate(cfg, tiny_model(cfg), reference)

    out = str(tmp_path / "lagging")
    model = tiny_model(cfg)
    handle, _ = crash_after(model, 2 * 2)
    with pytest.raises(RuntimeError, match="simulated crash"):
        annotate(cfg, model, out)
    handle.remove()

    progress = os.path.join(out, "progress")
    real_listdir, frozen = os.listdir, {}

    def lagging_listdir(path="."):
        if os.path.abspath(str(path)) == os.path.abspath(progress):
            return list(frozen.setdefault("names", real_listdir(path)))
        return real_listdir(path)

    monkeypatch.setattr(os, "listdir", lagging_listdir)
    annotate(cfg, model, out)
    monkeypatch.undo()
    assert len([n for n in frozen["names"] if n.startswith("chunk-")]) == 1  # the crashed run's
    for name in (OUTPUT_JSON, STATS_JSON):
        assert read_bytes(os.path.join(out, name)) == read_bytes(os.path.join(reference, name))


def _store(root, chunks):
    """A progress directory of chunks, each a list of (image_id, detection scores)."""
    store = ProgressStore(root)
    for first, chunk_images in chunks:
        chunk = PredictionChunk()
        for i, (image_id, scores) in enumerate(chunk_images):
            kp_scores = [k + 1 + s for s in scores for k in range(K)]
            chunk.add(first + i, image_id, 50, 60, _fake_instances(scores, kp_scores))
        store.write(chunk, K)
    return store


def test_an_image_in_two_chunks_counts_once(tmp_path):
    """Whatever is on disk (two jobs labeled image 11), its detections count
    once, for the labels and for the scores the auto thresholds are calibrated on."""
    a = (10, [0.9, 0.2]), (11, [0.8, 0.7, 0.6])
    b = (12, [0.5]), (13, [0.4, 0.3])
    images = {i: {"file_name": f"{i}.jpg"} for i in (10, 11, 12, 13)}
    labeled = LabeledStats(("x",), num_images=2, num_instances=3, num_keypoints=24)
    once = _store(str(tmp_path / "once"), [(0, a), (2, b)])
    # The same detections, and image 11 (other detections) again in a later chunk.
    twice = _store(str(tmp_path / "twice"), [(0, a), (1, [(11, [0.95, 0.94, 0.93, 0.92])]), (2, b)])
    expected = make_labels(once, images, LabelingRule(None, None, 0), labeled, K)
    got = make_labels(twice, images, LabelingRule(None, None, 0), labeled, K)
    np.testing.assert_array_equal(got.all_scores, expected.all_scores)
    assert len(got.all_scores) == 8
    assert got.score == expected.score and got.keypoint == expected.keypoint
    assert [x.image_id for x in got.labels] == [10, 11, 12, 13]
    for x, y in zip(got.labels, expected.labels):
        np.testing.assert_array_equal(x.scores, y.scores)
        np.testing.assert_array_equal(x.keypoints, y.keypoints)
    # Only the named chunks are read: a chunk missing from a lagging listing can be named.
    named = make_labels(
        twice,
        images,
        LabelingRule(0.0, 0.0, 0),
        None,
        K,
        chunk_names=["chunk-000000000.npz", "chunk-000000002.npz"],
    )
    assert sum(len(x.scores) for x in named.labels) == 8


# ------------------------------------------------------------------------------------------
# Two machines: two torchrun nodes on localhost
# ------------------------------------------------------------------------------------------
def _path_datasets(tmp_path):
    """The fixture's kind of data, named by path as on a command line: a labeled JSON with
    absolute file names, and a folder of unlabeled images."""
    labeled = MetadataCatalog.get(
        make_dataset(str(tmp_path / "labeled"), 4, seed=1, annotations_per_image=[1, 2, 1, 2])
    )
    with open(labeled.json_file) as f:
        coco = json.load(f)
    for image in coco["images"]:
        image["file_name"] = os.path.join(labeled.image_root, image["file_name"])
    labeled_json = str(tmp_path / "labeled.json")
    with open(labeled_json, "w") as f:
        json.dump(coco, f)
    unlabeled = MetadataCatalog.get(make_dataset(str(tmp_path / "unlabeled"), 5, seed=3))
    os.remove(unlabeled.json_file)  # a folder of images only
    return labeled_json, "folder:" + unlabeled.image_root


@pytest.mark.slow
def test_two_torchrun_nodes_on_localhost_label_each_image_once(tmp_path):
    """The pipeline's launcher for one annotation job over two machines, run as
    two torchrun nodes on localhost into one output folder, labels every image once and writes
    what one process writes, byte for byte."""
    from dd_detectron.pipeline.plan import annotate_launcher

    labeled_json, unlabeled = _path_datasets(tmp_path)
    weights = str(tmp_path / "teacher.pth")
    # No flip: a dataset named by path has no keypoint flip map.
    cfg = tiny_cfg(labeled_json, unlabeled, "DD.ANNOTATE.SAVE_PERIOD", 1, "TEST.AUG.FLIP", False)
    torch.save(tiny_model(cfg).state_dict(), weights)
    config_file = tmp_path / "teacher.yaml"
    config_file.write_text(cfg.dump())
    tool = [str(REPO / "tools" / "annotate_net.py"), "--config-file", str(config_file)]
    env = child_env(REPO, OMP_NUM_THREADS="1")

    single = str(tmp_path / "single")
    subprocess.run(
        [sys.executable, *tool, "--output", single, "MODEL.WEIGHTS", weights],
        env=env,
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )

    url = f"tcp://127.0.0.1:{free_port()}"
    nodes = []
    for machine in (0, 1):
        launcher, node_args = annotate_launcher(2, 2, machine, url)
        # One process per machine is enough to have two machines; fewer processes for a 2-core CI.
        launcher = [a if "nproc_per_node" not in a else "--nproc_per_node=1" for a in launcher]
        with open(tmp_path / f"machine{machine}.log", "w") as log:  # the child keeps its copy
            nodes.append(
                subprocess.Popen(
                    [sys.executable, *launcher, *node_args, *tool]
                    + ["--output", str(tmp_path / "two"), "MODEL.WEIGHTS", weights],
                    env=env,
                    stdout=log,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        codes = [node.wait(timeout=600) for node in nodes]
    finally:
        for node in nodes:
            node.kill()
    logs = [(tmp_path / f"machine{m}.log").read_text() for m in (0, 1)]
    assert codes == [0, 0], logs[0][-3000:] + logs[1][-3000:]
    # The two machines were two nodes of one job: processes 0 and 1 of 2, one log each.
    for rank, log_name in enumerate(("log.txt", "log.txt.rank1")):
        log = (tmp_path / "two" / log_name).read_text()
        assert f"Rank of current process: {rank}. World size: 2" in log

    store = ProgressStore(str(tmp_path / "two" / "progress"))
    per_chunk = [store.finished_image_ids([name]) for name in store.chunk_names()]
    assert sum(len(ids) for ids in per_chunk) == len(set().union(*per_chunk)) == 5
    for name in (OUTPUT_JSON, STATS_JSON):
        assert read_bytes(str(tmp_path / "two" / name)) == read_bytes(os.path.join(single, name))


@pytest.mark.slow
def test_child_processes_keep_packages_found_through_pythonpath(tmp_path, monkeypatch):
    """Packages installed into a target folder (``pip install --target``) and found through
    PYTHONPATH stay importable in the tools the tests start, beside this checkout."""
    target = tmp_path / "site"
    target.mkdir()
    (target / "dd_target_folder_marker.py").write_text("VALUE = 7\n")
    monkeypatch.setenv("PYTHONPATH", str(target))
    code = "import dd_target_folder_marker, dd_detectron; print(dd_target_folder_marker.VALUE)"
    done = subprocess.run(
        [sys.executable, "-c", code],
        env=child_env(REPO),
        cwd=str(tmp_path),  # not the checkout: dd_detectron must come through PYTHONPATH too
        capture_output=True,
        text=True,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "7"
