"""The student's ratio loader: exact per-minibatch counts, passes, seeds, ranks, errors, logging.

Toy COCO keypoint datasets are written to tmp dirs by ``write_toy_keypoints`` (also used by
test_student.py); nothing here needs the synthetic datasets or a GPU.
"""

import argparse
import collections
import itertools
import json
import os
import re
import uuid

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from detectron2.config import get_cfg
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_NAMES,
)
from detectron2.utils.events import EventStorage
from support import TOY_SIZES, register_toy_labeled, write_toy_keypoints

from dd_detectron import add_dd_config
from dd_detectron.data import (
    build_ratio_train_loader,
    register_generated,
    register_path_datasets,
)
from dd_detectron.data.ratio_loader import SOURCE_KEY, RatioPlan, SourceSlotSampler
from dd_detectron.engine import SourceCountingLoader


def toy_dicts(prefix, n):
    """Minimal dataset dicts (no image files) for loaders run with an identity mapper."""
    return [
        {"file_name": f"{prefix}{i}", "width": TOY_SIZES[i % 2][0], "height": TOY_SIZES[i % 2][1]}
        for i in range(n)
    ]


def identity(record):
    return record


def simulated_loaders(B, f, W, *, n_labeled=23, n_generated=17, seed=3, grouping=True):
    """One loader per simulated rank, all built with the same seed."""
    labeled, generated = toy_dicts("L", n_labeled), toy_dicts("G", n_generated)
    return [
        build_ratio_train_loader(
            labeled,
            generated,
            mapper=identity,
            total_batch_size=B,
            labeled_fraction=f,
            aspect_ratio_grouping=grouping,
            seed=seed,
            rank=r,
            world_size=W,
        )
        for r in range(W)
    ]


def global_batches(loaders, iterations):
    """Per iteration, the list of per-rank batches."""
    return list(itertools.islice(zip(*loaders), iterations))


# (B, f, W) -> (L, per-rank labeled counts): uneven splits, halves, ranks with one source only.
PLANS = {
    (16, 0.6, 8): (10, (2, 2, 1, 1, 1, 1, 1, 1)),
    (16, 0.6, 1): (10, (10,)),
    (10, 0.6, 2): (6, (3, 3)),
    (4, 0.3, 2): (1, (1, 0)),
    (10, 0.35, 2): (4, (2, 2)),  # 3.5 rounds half up
    (3, 0.5, 1): (2, (2,)),  # 1.5 rounds half up
    (8, 0.9, 4): (7, (2, 2, 2, 1)),  # ranks 0-2 draw no generated image
    (5, 0.5, 5): (3, (1, 1, 1, 0, 0)),
}


@pytest.mark.parametrize("B,f,W", list(PLANS), ids=lambda v: str(v))
def test_plan_counts(B, f, W):
    L, labeled = PLANS[(B, f, W)]
    plan = RatioPlan(B, f, W)
    assert plan.num_labeled == L and plan.num_generated == B - L
    assert plan.counts("labeled") == labeled
    assert plan.counts("generated") == tuple(B // W - n for n in labeled)
    assert plan.realised_fraction == L / B


@pytest.mark.parametrize("B,f,W", list(PLANS), ids=lambda v: str(v))
def test_exact_counts_in_every_global_minibatch(B, f, W):
    L, labeled = PLANS[(B, f, W)]
    iterations = 40
    totals = collections.Counter()
    for per_rank in global_batches(simulated_loaders(B, f, W), iterations):
        counts = collections.Counter()
        for rank, batch in enumerate(per_rank):
            assert len(batch) == B // W
            rank_counts = collections.Counter(r[SOURCE_KEY] for r in batch)
            assert rank_counts["labeled"] == labeled[rank]
            assert rank_counts["generated"] == B // W - labeled[rank]
            # The tag agrees with the record's origin.
            assert all(r["file_name"][0] == r[SOURCE_KEY][0].upper() for r in batch)
            counts.update(rank_counts)
        assert counts == {"labeled": L, "generated": B - L}
        totals.update(counts)
    assert totals["labeled"] == iterations * L and totals["generated"] == iterations * (B - L)


def test_aspect_ratio_grouping_within_each_source():
    for per_rank in global_batches(simulated_loaders(16, 0.5, 2), 30):
        for batch in per_rank:
            for source in ("labeled", "generated"):
                landscape = {r["width"] > r["height"] for r in batch if r[SOURCE_KEY] == source}
                assert len(landscape) == 1


def source_stream(loaders, source, iterations):
    """The global draw order of one source: per iteration, rank 0's images, then rank 1's..."""
    stream = []
    for per_rank in global_batches(loaders, iterations):
        for batch in per_rank:
            stream += [r["file_name"] for r in batch if r[SOURCE_KEY] == source]
    return stream


@pytest.mark.parametrize("W", [1, 2, 4])
def test_each_image_once_per_pass_across_ranks(W):
    # B = 8, f = 0.5: 4 labeled + 4 generated per global minibatch. 12 labeled images: a pass
    # every 3 iterations; 7 generated images: passes straddle minibatches.
    n_labeled, n_generated, iterations = 12, 7, 21
    loaders = simulated_loaders(
        8, 0.5, W, n_labeled=n_labeled, n_generated=n_generated, grouping=False
    )
    for source, n in (("labeled", n_labeled), ("generated", n_generated)):
        stream = source_stream(loaders, source, iterations)
        assert len(stream) == iterations * 4
        for start in range(0, len(stream), n):
            one_pass = stream[start : start + n]
            assert len(set(one_pass)) == len(one_pass)  # nobody draws an image twice in a pass
            if len(one_pass) == n:
                assert sorted(one_pass) == sorted(f"{source[0].upper()}{i}" for i in range(n))
        # The smaller source repeats more: 84 draws = 7 passes of 12, 12 passes of 7.
        assert set(collections.Counter(stream).values()) == {iterations * 4 // n}


@pytest.mark.parametrize("W", [2, 3])
def test_sampler_slots_partition_the_global_stream(W):
    # With grouping, only the order of use changes; the samplers decide who draws what.
    plan, size, blocks = RatioPlan(6 * W, 0.5, W), 11, 30
    counts = plan.counts("labeled")
    per_rank = [
        list(
            itertools.islice(
                SourceSlotSampler(
                    size, plan.num_labeled, plan.offset("labeled", r), counts[r], seed=5
                ),
                blocks * counts[r],
            )
        )
        for r in range(W)
    ]
    stream, owners = [], []
    for t in range(blocks):
        for r in range(W):
            stream += per_rank[r][t * counts[r] : (t + 1) * counts[r]]
            owners += [r] * counts[r]
    # The ranks' slots, put back in slot order, are exactly the shared shuffled stream.
    g = torch.Generator()
    g.manual_seed(5)
    reference = []
    while len(reference) < len(stream):
        reference += torch.randperm(size, generator=g).tolist()
    assert stream == reference[: len(stream)]
    # So within every pass the ranks draw disjoint sets that together are every image once.
    for start in range(0, len(stream) - size + 1, size):
        drawn = [
            {
                i
                for i, o in zip(stream[start : start + size], owners[start : start + size])
                if o == r
            }
            for r in range(W)
        ]
        assert sum(map(len, drawn)) == size and set().union(*drawn) == set(range(size))


def test_same_seed_same_batches_other_seed_other_batches():
    def names(seed):
        labeled, generated = toy_dicts("L", 23), toy_dicts("G", 17)
        loader = build_ratio_train_loader(
            labeled,
            generated,
            mapper=identity,
            total_batch_size=8,
            labeled_fraction=0.6,
            seed=seed,
            rank=0,
            world_size=1,
        )
        return [[r["file_name"] for r in b] for b in itertools.islice(loader, 15)]

    assert names(11) == names(11)
    assert names(11) != names(12)


def test_dataloader_workers_keep_exact_counts():
    loader = build_ratio_train_loader(
        toy_dicts("L", 9),
        toy_dicts("G", 13),
        mapper=identity,
        total_batch_size=5,
        labeled_fraction=0.6,
        num_workers=2,
        seed=0,
        rank=0,
        world_size=1,
    )
    for batch in itertools.islice(loader, 6):
        assert collections.Counter(r[SOURCE_KEY] for r in batch) == {"labeled": 3, "generated": 2}


def _gloo_worker(rank, world_size, rendezvous, out_dir):
    dist.init_process_group(
        "gloo", init_method=f"file://{rendezvous}", rank=rank, world_size=world_size
    )
    # No seed, rank or world size given: taken from the process group, seed shared by it.
    loader = SourceCountingLoader(
        build_ratio_train_loader(
            toy_dicts("L", 12),
            toy_dicts("G", 18),
            mapper=identity,
            total_batch_size=6,
            labeled_fraction=0.5,
            aspect_ratio_grouping=False,
        )
    )
    batches, scalars = [], []
    with EventStorage() as storage:
        for batch in itertools.islice(loader, 4):
            batches.append([r["file_name"] for r in batch])
            scalars.append({k: v[0] for k, v in storage.latest().items()})
            storage.step()
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"batches": batches, "scalars": scalars}, f)
    dist.barrier()
    # Exit without tearing gloo down: its teardown (at interpreter exit, and here even after an
    # explicit destroy_process_group) sometimes aborts a process that has done all its work
    # (SIGABRT, "terminate called without an active exception"). All this test checks is on disk.
    os._exit(0)


@pytest.mark.slow
def test_two_gloo_ranks_draw_disjoint_images(tmp_path):
    mp.spawn(
        _gloo_worker, args=(2, str(tmp_path / "rendezvous"), str(tmp_path)), nprocs=2, join=True
    )
    ranks = []
    for r in range(2):
        with open(tmp_path / f"rank{r}.json") as f:
            ranks.append(json.load(f))
    # 6 per global batch, 3 labeled: rank 0 draws 2 labeled + 1 generated, rank 1 1 + 2.
    for r, expected in ((0, (2, 1)), (1, (1, 2))):
        for batch in ranks[r]["batches"]:
            assert (sum(n[0] == "L" for n in batch), sum(n[0] == "G" for n in batch)) == expected
    # Labeled: 12 images, 3 per iteration: 4 iterations = exactly one pass, split between ranks.
    labeled = [[n for b in ranks[r]["batches"] for n in b if n[0] == "L"] for r in range(2)]
    assert not set(labeled[0]) & set(labeled[1])
    assert sorted(labeled[0] + labeled[1]) == sorted(f"L{i}" for i in range(12))
    generated = [[n for b in ranks[r]["batches"] for n in b if n[0] == "G"] for r in range(2)]
    assert not set(generated[0]) & set(generated[1]) and len(set(generated[0] + generated[1])) == 12
    # Both ranks log the GLOBAL counts.
    for r in range(2):
        for s in ranks[r]["scalars"]:
            assert (s["dd/labeled_images"], s["dd/generated_images"], s["dd/labeled_fraction"]) == (
                3,
                3,
                0.5,
            )


def test_counting_loader_puts_scalars_every_iteration():
    loader = SourceCountingLoader(
        build_ratio_train_loader(
            toy_dicts("L", 9),
            toy_dicts("G", 13),
            mapper=identity,
            total_batch_size=5,
            labeled_fraction=0.6,
            seed=0,
            rank=0,
            world_size=1,
        )
    )
    assert loader.plan.num_labeled == 3  # the wrapped loader's attributes stay reachable
    with EventStorage() as storage:
        for _ in itertools.islice(loader, 3):
            storage.step()
        history = storage.history("dd/labeled_images").values()
    assert [v for v, _ in history] == [3, 3, 3]
    assert storage.latest()["dd/generated_images"][0] == 2
    assert storage.latest()["dd/labeled_fraction"][0] == pytest.approx(0.6)
    # Outside a training loop nothing is logged and nothing fails.
    assert len(next(iter(loader))) == 5


# ------------------------------------------------------------------------------------------
# Configs and bad input
# ------------------------------------------------------------------------------------------


def student_cfg(labeled, generated, **overrides):
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.MODEL.KEYPOINT_ON = True
    cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS = 17
    cfg.DATASETS.TRAIN = (labeled,)
    cfg.DD.STUDENT.GENERATED_DATASETS = tuple(generated)
    cfg.SOLVER.IMS_PER_BATCH = 5
    cfg.INPUT.MIN_SIZE_TRAIN = (48,)
    cfg.INPUT.MAX_SIZE_TRAIN = 96
    cfg.DATALOADER.NUM_WORKERS = 0
    for key, value in overrides.items():
        cfg.merge_from_list([key, value])
    return cfg


def test_config_loader_maps_and_tags_both_sources(tmp_path):
    labeled = register_toy_labeled(str(tmp_path / "lab"), 6, seed=1)
    generated_json = write_toy_keypoints(str(tmp_path / "gen"), 4, seed=2)
    cfg = student_cfg(labeled, [generated_json])
    assert register_path_datasets(cfg) == [generated_json]
    loader = build_ratio_train_loader(cfg, seed=0)
    batch = next(iter(loader))
    assert [r[SOURCE_KEY] for r in batch] == ["labeled"] * 3 + ["generated"] * 2
    for record in batch:
        assert record["image"].shape[0] == 3
        assert record["instances"].gt_keypoints.tensor.shape[1:] == (17, 3)
    assert {r["file_name"].startswith(str(tmp_path / "gen")) for r in batch[3:]} == {True}


@pytest.mark.parametrize("fraction", [0.0, 1.0, 1.5, -0.2])
def test_fraction_outside_open_interval(fraction):
    with pytest.raises(
        ValueError, match=r"DD\.STUDENT\.LABELED_FRACTION must be in the open interval \(0, 1\)"
    ):
        RatioPlan(16, fraction)


def test_fraction_outside_interval_fails_before_reading_data():
    cfg = student_cfg(
        "no_such_dataset", ["no_such_generated"], **{"DD.STUDENT.LABELED_FRACTION": 1.5}
    )
    with pytest.raises(ValueError, match=r"DD\.STUDENT\.LABELED_FRACTION"):
        build_ratio_train_loader(cfg)


@pytest.mark.parametrize("fraction,source", [(0.02, "labeled"), (0.98, "generated")])
def test_fraction_leaving_a_source_empty(fraction, source):
    expected = rf"LABELED_FRACTION={fraction} with SOLVER.IMS_PER_BATCH=16 .* no {source} image"
    with pytest.raises(ValueError, match=expected):
        RatioPlan(16, fraction)


def test_batch_not_divisible_by_ranks():
    with pytest.raises(
        ValueError, match=r"SOLVER\.IMS_PER_BATCH=10 must be divisible by the number of ranks \(4\)"
    ):
        RatioPlan(10, 0.6, 4)


def _write_json(path, data):
    with open(path, "w") as f:
        json.dump(data, f)
    return str(path)


def test_generated_json_with_no_images(tmp_path):
    path = _write_json(
        tmp_path / "empty.json",
        {"images": [], "annotations": [], "categories": [{"id": 1, "name": "person"}]},
    )
    name = f"gen_{uuid.uuid4().hex[:8]}"
    register_generated(name, path)
    with pytest.raises(ValueError, match=rf"{path}: the generated dataset '{name}' has no images"):
        DatasetCatalog.get(name)


def test_generated_json_without_keypoints(tmp_path):
    """Box labels load (a box or mask student's); a keypoint student refuses them, naming the
    key and the file."""
    labeled = register_toy_labeled(str(tmp_path / "lab"), 4, seed=1)
    path = write_toy_keypoints(str(tmp_path / "gen"), 3, seed=4, keypoints=False)
    cfg = student_cfg(labeled, [path])
    register_path_datasets(cfg)
    assert all("keypoints" not in a for r in DatasetCatalog.get(path) for a in r["annotations"])
    with pytest.raises(
        ValueError,
        match=rf"GENERATED_DATASETS=.*\(file {re.escape(path)}\): an annotation of image 1 has no "
        "'keypoints'",
    ):
        build_ratio_train_loader(cfg, seed=0)
    cfg.MODEL.KEYPOINT_ON = False  # a box student trains on them
    assert len(next(iter(build_ratio_train_loader(cfg, seed=0)))) == 5


def test_generated_json_with_keypoints_on_some_annotations(tmp_path):
    path = write_toy_keypoints(str(tmp_path), 3, seed=4)
    with open(path) as f:
        data = json.load(f)
    del data["annotations"][1]["keypoints"]
    _write_json(path, data)
    register_path_datasets(student_cfg("unused", [path]))
    with pytest.raises(ValueError, match=rf"{path}: an annotation of image 1 has no 'keypoints'"):
        DatasetCatalog.get(path)


def test_generated_json_without_annotations(tmp_path):
    path = write_toy_keypoints(str(tmp_path), 3, seed=4, annotations=False)
    register_path_datasets(student_cfg("unused", [path]))
    with pytest.raises(ValueError, match=rf"{path}: .* has 3 images but no annotations"):
        DatasetCatalog.get(path)


def test_generated_keypoints_must_match_labeled(tmp_path):
    labeled = register_toy_labeled(str(tmp_path / "lab"), 4, seed=1)
    path = write_toy_keypoints(str(tmp_path / "gen"), 3, seed=5, num_keypoints=5)
    cfg = student_cfg(labeled, [path])
    register_path_datasets(cfg)
    with pytest.raises(
        ValueError, match=r"GENERATED_DATASETS=.*has 15 keypoint values, expected 3 \* 17 = 51"
    ):
        build_ratio_train_loader(cfg, seed=0)


def test_missing_or_unknown_generated_dataset(tmp_path):
    missing = str(tmp_path / "nowhere.json")
    with pytest.raises(
        FileNotFoundError,
        match=re.escape(
            f"DD.STUDENT.GENERATED_DATASETS: {missing!r} names the file {missing}, "
            "which does not exist"
        ),
    ):
        register_path_datasets(student_cfg("unused", [missing]))
    # The loader takes registered names only, and says who registers paths.
    for unknown in ("not_registered", str(tmp_path / "never_registered.json")):
        cfg = student_cfg("unused", [unknown])
        with pytest.raises(
            KeyError,
            match=re.escape(f"{unknown!r} is not a registered dataset")
            + r".*register_path_datasets\(cfg\)",
        ):
            build_ratio_train_loader(cfg, labeled_dataset=toy_dicts("L", 3), seed=0)
    with pytest.raises(ValueError, match=r"DD\.STUDENT\.GENERATED_DATASETS is empty"):
        build_ratio_train_loader(
            student_cfg("unused", []), labeled_dataset=toy_dicts("L", 3), seed=0
        )
    # A builtin name whose file was not written yet says which file is missing.
    with pytest.raises(
        FileNotFoundError, match=r"dd_generated/coco_un120_keypoints\.json .* does not exist"
    ):
        DatasetCatalog.get("dd_coco_un120_generated")


def test_builtin_generated_coco_shares_coco_keypoint_metadata():
    meta = MetadataCatalog.get("dd_coco_un120_generated")
    assert list(meta.keypoint_names) == list(COCO_PERSON_KEYPOINT_NAMES)
    assert meta.image_root == ""


def test_benchmark_train_loader_task_runs(tmp_path, load_tool):
    benchmark = load_tool("benchmark")
    labeled = register_toy_labeled(str(tmp_path / "lab"), 6, seed=1)
    generated = write_toy_keypoints(str(tmp_path / "gen"), 4, seed=2)
    cfg = student_cfg(labeled, [generated])
    register_path_datasets(cfg)  # as the tool's setup does
    args = argparse.Namespace(rounds=2, num_iters=2, warmup=1)
    result = benchmark.TASKS["train_loader"](cfg, args)
    assert set(result["batches_per_s"]) == {"ratio (dd_detectron)", "build_detection_train_loader"}
    assert len(result["overhead_percent_per_round"]) == 2
    assert (result["labeled_images"], result["generated_images"]) == (6, 4)
