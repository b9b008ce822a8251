"""CUDA checks of the keypoint ensembler and the annotation stage's memory handling (run by
dev/gpu_check.sh on a GPU machine; skipped without CUDA).

- the ensembler on CUDA gives the CPU's boxes and keypoints (within 1e-3 relative);
- a real CUDA out-of-memory in one image is recorded, the cache is freed and the next image is
  labeled, the keypoint head switched back on;
- a 12 MP photo's keypoints are decoded within a bounded amount of GPU memory.
"""

import pytest
import torch
from support import H, random_image
from support import run_ensembler as run
from support import tiny_model
from support import tta_cfg as tiny_cfg

from dd_detectron.annotation.inputs import SkipUnreadable
from dd_detectron.modeling.test_time_augmentation import RCNNWithTTA

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.fixture
def exact_cuda():
    """Full float32 on the GPU (no TF32), so that CPU and GPU agree to float rounding."""
    saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved


def _cuda_copy(cfg, model):
    cfg = cfg.clone()
    cfg.MODEL.DEVICE = "cuda"
    gpu = tiny_model(cfg)
    gpu.load_state_dict(model.state_dict())
    return cfg, gpu.eval()


@pytest.mark.parametrize(
    "opts", [(), ("DD.TTA.VIEW_BATCH_SIZE", 2, "DD.TTA.CACHE_FEATURES", False)]
)
def test_ensembler_on_cuda_matches_cpu(exact_cuda, opts):
    cfg = tiny_cfg("TEST.AUG.FLIP", True, "TEST.AUG.MIN_SIZES", (64, H, 128), *opts)
    model = tiny_model(cfg)
    gpu_cfg, gpu_model = _cuda_copy(cfg, model)
    image = random_image(5)
    cpu = run(RCNNWithTTA(cfg, model), image)
    gpu = run(RCNNWithTTA(gpu_cfg, gpu_model), image).to("cpu")
    assert len(cpu) == len(gpu) == 5
    torch.testing.assert_close(gpu.pred_boxes.tensor, cpu.pred_boxes.tensor, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gpu.scores, cpu.scores, rtol=1e-3, atol=1e-5)
    gpu_kp, cpu_kp = gpu.pred_keypoints, cpu.pred_keypoints
    torch.testing.assert_close(gpu_kp[..., :2], cpu_kp[..., :2], rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(gpu_kp[..., 2], cpu_kp[..., 2], rtol=1e-3, atol=1e-5)


def test_real_cuda_out_of_memory_is_recorded_and_freed():
    cpu_cfg = tiny_cfg("TEST.AUG.FLIP", True)
    cfg, model = _cuda_copy(cpu_cfg, tiny_model(cpu_cfg))
    ens = RCNNWithTTA(cfg, model)
    state = {"poison": False}

    def hook(module, inputs, output):
        if state["poison"]:
            # More than any GPU has: the caching allocator raises torch.cuda.OutOfMemoryError.
            torch.empty(1 << 50, dtype=torch.uint8, device="cuda")

    model.roi_heads.box_predictor.register_forward_hook(hook)
    runner = SkipUnreadable(ens)
    inputs = [
        {
            "image": random_image(s),
            "height": H,
            "width": 120,
            "image_id": s,
            "file_name": f"{s}.jpg",
            "dd_index": s,
        }
        for s in range(3)
    ]
    outputs = []
    for x in inputs:
        state["poison"] = x["image_id"] == 1
        outputs += runner([x])
    assert "out of memory" in outputs[1]["error"]
    assert len(outputs[0]["instances"]) == len(outputs[2]["instances"]) == 5
    assert model.roi_heads.keypoint_on is True


def test_12_megapixel_photo_decodes_in_bounded_memory():
    cpu_cfg = tiny_cfg("TEST.AUG.FLIP", True)
    ens = RCNNWithTTA(*_cuda_copy(cpu_cfg, tiny_model(cpu_cfg)))
    image = random_image(0, 3000, 4000)
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    base = torch.cuda.memory_allocated()
    out = run(ens, image)
    peak_gib = (torch.cuda.max_memory_allocated() - base) / 2**30
    assert len(out) == 5
    # Unbounded, one 3000 x 4000 box needs 17 x 12M floats, several times over: > 3 GiB.
    assert peak_gib < 1.0, peak_gib
