"""Tests of memory and throughput of the annotation stage: keypoints
decoded in a bounded frame, an image the model runs out of memory on is recorded and skipped
(heads switched back on), heatmaps dropped on the device, views made in the DataLoader's workers
give the same labels, and the timing summary.

Out-of-memory is emulated on the CPU: a hook raises what CUDA raises.
"""

import json
import os

import cv2
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from detectron2.modeling import DatasetMapperTTA
from detectron2.structures import heatmaps_to_keypoints
from support import H, W, annotate_cfg
from support import make_keypoint_dataset as make_dataset
from support import random_image
from support import run_ensembler as run
from support import tiny_model
from support import tta_cfg as tiny_cfg

from dd_detectron.annotation import OUTPUT_JSON, STATS_JSON, annotate
from dd_detectron.annotation.inputs import (
    ReadImageOrError,
    SkipUnreadable,
    is_out_of_memory,
    throughput,
)
from dd_detectron.modeling.test_time_augmentation import (
    RCNNWithTTA,
    bounded_heatmaps_to_keypoints,
)

# Bit-identical detections across runs and processes need the same thread count.
pytestmark = pytest.mark.usefixtures("one_thread")

CUDA_OOM = "CUDA out of memory. Tried to allocate 3.17 GiB (GPU 0; 15.77 GiB total capacity)"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """As test_annotate's: a labeled set; 5 good images (ids 100..104) and 3 unreadable files."""
    root = tmp_path_factory.mktemp("memory_data")
    labeled = make_dataset(str(root / "labeled"), 4, seed=1, annotations_per_image=[1, 2, 1, 2])
    bad = [
        ("truncated.jpg", b"\xff\xd8\xff"),
        ("not_an_image.jpg", b"hello"),
        ("missing.jpg", None),
    ]
    unlabeled = make_dataset(str(root / "unlabeled"), 5, seed=2, extra_files=bad)
    return labeled, unlabeled


# ------------------------------------------------------------------------------------------
# Decoding in a bounded frame
# ------------------------------------------------------------------------------------------
def _peaked_maps(num_rois, num_keypoints=17, side=56, seed=0):
    """Smooth single-peak logits (a Gaussian bump at a random sub-pixel point per map)."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.rand(num_rois, num_keypoints, 2, generator=g) * (side - 8) + 4
    grid = torch.arange(side, dtype=torch.float32) + 0.5
    dy = grid[None, None, :, None] - centers[..., 1, None, None]
    dx = grid[None, None, None, :] - centers[..., 0, None, None]
    return 8.0 * torch.exp(-(dx**2 + dy**2) / (2 * 3.0**2))


@pytest.fixture
def interpolate_sizes(monkeypatch):
    """Records the output size of every bicubic resize (detectron2's decoding)."""
    sizes = []
    original = F.interpolate

    def recording(input, size=None, *args, **kwargs):
        if kwargs.get("mode") == "bicubic":
            sizes.append(tuple(size))
        return original(input, size, *args, **kwargs)

    monkeypatch.setattr(F, "interpolate", recording)
    return sizes


def test_bounded_decoding_is_detectron2s_when_boxes_fit():
    maps = torch.randn(4, 17, 56, 56, generator=torch.Generator().manual_seed(0))
    rois = torch.tensor(
        [
            [3.2, 4.1, 90.7, 200.0],
            [0.0, 0.0, 0.4, 0.3],
            [10.0, 20.0, 138.0, 84.5],
            [5.5, 6.5, 261.5, 7.0],
        ]
    )
    exact = heatmaps_to_keypoints(maps, rois)
    assert torch.equal(bounded_heatmaps_to_keypoints(maps, rois, 256), exact)
    assert torch.equal(bounded_heatmaps_to_keypoints(maps, rois, 0), exact)  # 0: no bound
    # A mix: the boxes that fit are decoded exactly, whatever the others are.
    mixed = bounded_heatmaps_to_keypoints(maps, rois, 200)
    fits = torch.tensor([False, True, True, False])
    assert torch.equal(mixed[fits], exact[fits])


def test_bounded_decoding_lands_near_full_size_decoding(interpolate_sizes):
    maps = _peaked_maps(3)
    rois = torch.tensor(
        [[10.0, 20.0, 610.0, 470.0], [0.0, 0.0, 100.0, 800.0], [5.0, 5.0, 105.0, 65.0]]
    )
    exact = heatmaps_to_keypoints(maps, rois)
    interpolate_sizes.clear()
    bounded = bounded_heatmaps_to_keypoints(maps, rois, 128)
    assert interpolate_sizes == [(60, 100), (128, 128), (128, 100)]
    # Within one pixel of the decoding frame: side / 128 image pixels where a side is shrunk.
    frame_pixel = torch.tensor([[600.0, 450.0], [100.0, 800.0]]) / 128
    frame_pixel[1, 0] = 1.0  # 100 is not shrunk: one image pixel
    error = (bounded[:2, :, :2] - exact[:2, :, :2]).abs().amax(dim=1)
    assert bool((error <= frame_pixel).all()), error
    assert torch.equal(bounded[2], exact[2])  # 100 x 60 fits: exact


@pytest.mark.slow
def test_default_bound_is_within_a_pixel_or_two():
    """A 1500 x 1100 box (both decodings fit in memory) at the default bound, 1024."""
    maps = _peaked_maps(2, seed=1)
    rois = torch.tensor([[7.0, 3.0, 1507.0, 1103.0], [0.0, 0.0, 1100.0, 1500.0]])
    exact = heatmaps_to_keypoints(maps, rois)
    bounded = bounded_heatmaps_to_keypoints(maps, rois, 1024)
    error = (bounded[:, :, :2] - exact[:, :, :2]).abs()
    assert float(error.max()) <= 1500 / 1024, error.max()
    # The scores: the peak logit and the softmax there, read from a slightly coarser grid.
    torch.testing.assert_close(bounded[:, :, 2:], exact[:, :, 2:], rtol=1e-3, atol=1e-4)


def test_huge_box_decodes_within_the_bound(interpolate_sizes):
    # A 40000 x 30000 box: 17 full-size maps would need 80 GB.
    maps = _peaked_maps(1)
    rois = torch.tensor([[100.0, 200.0, 40100.0, 30200.0]])
    out = bounded_heatmaps_to_keypoints(maps, rois, 1024)
    assert max(max(s) for s in interpolate_sizes) <= 1024
    assert bool((out[0, :, 0] >= 100).all() and (out[0, :, 0] <= 40100).all())
    assert bool((out[0, :, 1] >= 200).all() and (out[0, :, 1] <= 30200).all())


@pytest.mark.slow
def test_ensembler_decodes_a_12_megapixel_photo_in_a_bounded_frame(monkeypatch, interpolate_sizes):
    """On today's code, each of the 5 boxes is decoded at its size in the 3000 x 4000 photo."""
    cfg = tiny_cfg("TEST.AUG.FLIP", True)
    ens = RCNNWithTTA(cfg, tiny_model(cfg))
    out = run(ens, random_image(0, 3000, 4000))
    assert len(out) == 5
    sides = (out.pred_boxes.tensor[:, 2:] - out.pred_boxes.tensor[:, :2]).amax(dim=1)
    assert float(sides.max()) > 1024  # the bound is used
    assert max(max(s) for s in interpolate_sizes) <= cfg.DD.TTA.KEYPOINT_DECODE_MAX_SIZE
    assert tuple(out.pred_keypoints.shape) == (5, 17, 3)


# ------------------------------------------------------------------------------------------
# Out of memory: the heads come back on, the image is recorded and skipped
# ------------------------------------------------------------------------------------------
def _raise_in_box_head(model, when):
    """A hook that raises CUDA's out-of-memory in the box head (heads switched off) when
    ``when()`` is true."""

    def hook(module, inputs, output):
        if when():
            raise torch.cuda.OutOfMemoryError(CUDA_OOM)

    return model.roi_heads.box_predictor.register_forward_hook(hook)


@pytest.mark.parametrize("error", [torch.cuda.OutOfMemoryError(CUDA_OOM), RuntimeError(CUDA_OOM)])
def test_heads_are_back_on_after_a_failed_view(error):
    cfg = tiny_cfg("TEST.AUG.FLIP", True)
    model = tiny_model(cfg)
    ens = RCNNWithTTA(cfg, model)
    expected = run(ens, random_image())

    def hook(module, inputs, output):
        raise error

    handle = model.roi_heads.box_predictor.register_forward_hook(hook)
    with pytest.raises(type(error)):
        run(ens, random_image())
    handle.remove()
    assert model.roi_heads.keypoint_on is True
    again = run(ens, random_image())
    assert torch.equal(again.pred_keypoints, expected.pred_keypoints)


def test_is_out_of_memory():
    assert is_out_of_memory(torch.cuda.OutOfMemoryError(CUDA_OOM))
    assert is_out_of_memory(RuntimeError(CUDA_OOM))
    assert is_out_of_memory(
        RuntimeError(
            "[enforce fail at alloc_cpu.cpp:83] DefaultCPUAllocator: can't allocate memory: you "
            "tried to allocate 3400000000 bytes"
        )
    )
    assert is_out_of_memory(MemoryError())
    assert not is_out_of_memory(RuntimeError("shape mismatch"))
    assert not is_out_of_memory(ValueError("out of memory"))


def _inputs(images):
    return [
        {
            "image": im,
            "height": im.shape[1],
            "width": im.shape[2],
            "image_id": i,
            "file_name": f"{i}.jpg",
            "dd_index": i,
        }
        for i, im in enumerate(images)
    ]


def test_skip_unreadable_records_out_of_memory_and_goes_on():
    cfg = tiny_cfg("TEST.AUG.FLIP", True)
    model = tiny_model(cfg)
    ens = RCNNWithTTA(cfg, model)
    images = [random_image(s) for s in range(3)]
    expected = [run(ens, im) for im in images]
    state = {"poison": False}
    handle = _raise_in_box_head(model, lambda: state["poison"])
    runner = SkipUnreadable(ens)
    outputs = []
    for i, x in enumerate(_inputs(images)):
        state["poison"] = i == 1
        outputs += runner([x])
    outputs += runner([{"error": "unreadable", "image_id": 9, "file_name": "x.jpg", "dd_index": 3}])
    handle.remove()
    assert outputs[1]["error"].startswith("out of memory: OutOfMemoryError: CUDA out of memory.")
    assert outputs[3] == {"error": "unreadable"}
    assert model.roi_heads.keypoint_on is True
    for i in (0, 2):
        inst = outputs[i]["instances"]
        # Only what the progress store keeps leaves the model, on the CPU; the values as they were.
        assert set(inst.get_fields()) == {"pred_boxes", "scores", "pred_classes", "pred_keypoints"}
        assert inst.pred_keypoints.device.type == "cpu"
        assert torch.equal(inst.pred_keypoints, expected[i].pred_keypoints)
        assert torch.equal(inst.pred_boxes.tensor, expected[i].pred_boxes.tensor)
    assert runner.timing["images"] == 3
    assert runner.timing["model_s"] > 0 and runner.timing["data_wait_s"] > 0


def test_skip_unreadable_stops_on_other_errors():
    cfg = tiny_cfg()
    model = tiny_model(cfg)

    def hook(module, inputs, output):
        raise RuntimeError("shape mismatch")  # a bug, not a property of one image

    model.roi_heads.box_predictor.register_forward_hook(hook)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        SkipUnreadable(RCNNWithTTA(cfg, model))(_inputs([random_image()]))


def test_throughput_helper():
    t = throughput({"data_wait_s": 1.0, "model_s": 3.0, "images": 8})
    assert t == {
        "data_wait_s": 1.0,
        "model_s": 3.0,
        "images": 8,
        "images_per_s": 2.0,
        "wait_share": 0.25,
    }
    assert throughput({"data_wait_s": 0.0, "model_s": 0.0, "images": 0})["images_per_s"] == 0.0


def test_annotate_records_an_out_of_memory_image_and_labels_the_others(data, tmp_path, monkeypatch):
    labeled, unlabeled = data
    cfg = annotate_cfg(labeled, unlabeled)
    model = tiny_model(cfg)
    poison_id = 102
    state = {"poison": False}
    original = RCNNWithTTA._inference_one_image

    def inference_one_image(self, input):
        state["poison"] = input["image_id"] == poison_id
        return original(self, input)

    monkeypatch.setattr(RCNNWithTTA, "_inference_one_image", inference_one_image)
    handle = _raise_in_box_head(model, lambda: state["poison"])
    out = str(tmp_path / "run")
    summary = annotate(cfg, model, out)["annotation"]
    handle.remove()
    assert model.roi_heads.keypoint_on is True
    with open(os.path.join(out, STATS_JSON)) as f:
        failed = {f["image_id"]: f["error"] for f in json.load(f)["failed_images"]}
    assert failed[poison_id].startswith("out of memory: OutOfMemoryError")
    assert len(failed) == 4  # and the 3 unreadable files
    with open(os.path.join(out, OUTPUT_JSON)) as f:
        assert sorted(im["id"] for im in json.load(f)["images"]) == [100, 101, 103, 104]
    assert summary["images"] == 4 and summary["failed_images"] == 4
    # A rerun resumes: the poison image is done (recorded), nothing runs again.
    state["poison"] = True
    annotate(cfg, model, out)


# ------------------------------------------------------------------------------------------
# Views made in the DataLoader's workers
# ------------------------------------------------------------------------------------------
def test_precomputed_views_give_the_same_result(tmp_path):
    cfg = tiny_cfg("TEST.AUG.FLIP", True, "TEST.AUG.MIN_SIZES", (64, H))
    ens = RCNNWithTTA(cfg, tiny_model(cfg))
    path = str(tmp_path / "a.jpg")
    cv2.imwrite(path, np.random.default_rng(0).integers(0, 256, (H, W, 3), dtype=np.uint8))
    record = {"image_id": 1, "file_name": path, "dd_index": 0}
    plain = ReadImageOrError(cfg.INPUT.FORMAT)(record)
    with_views = ReadImageOrError(cfg.INPUT.FORMAT, DatasetMapperTTA(cfg))(record)
    assert "image" not in with_views
    assert len(with_views["views"]) == len(with_views["transforms"]) == 4
    a = ens([plain])[0]["instances"]
    b = ens([with_views])[0]["instances"]
    for field in ("pred_boxes", "scores", "pred_classes", "pred_keypoints"):
        x, y = a.get(field), b.get(field)
        assert torch.equal(getattr(x, "tensor", x), getattr(y, "tensor", y)), field


def test_views_in_workers_equal_views_in_main(data, tmp_path):
    labeled, unlabeled = data
    model = tiny_model(annotate_cfg(labeled, unlabeled))
    outputs = {}
    in_workers = ("DD.ANNOTATE.VIEWS_IN_WORKERS", True, "DATALOADER.NUM_WORKERS", 1)
    for name, opts in (("main", ("DD.ANNOTATE.VIEWS_IN_WORKERS", False)), ("workers", in_workers)):
        out = str(tmp_path / name)
        results = annotate(annotate_cfg(labeled, unlabeled, *opts), model, out)
        timing = results["annotation"]["timing"]
        assert timing["images"] == 5  # the readable images
        assert 0.0 <= timing["wait_share"] <= 1.0 and timing["images_per_s"] > 0
        outputs[name] = [open(os.path.join(out, n), "rb").read() for n in (OUTPUT_JSON, STATS_JSON)]
    assert outputs["main"] == outputs["workers"]
