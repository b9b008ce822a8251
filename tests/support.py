"""What the tests share, as detectron2 keeps in its utils/testing.py: a tiny R-CNN of every head,
the toy datasets written to tmp folders, the ensembler's test inputs, and the torchrun and spawn
helpers. Tests import from here; no test module imports another."""

import json
import os
import socket
import uuid

import cv2
import numpy as np
import torch
from detectron2 import model_zoo
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import register_coco_instances
from detectron2.data.datasets.builtin_meta import (
    COCO_PERSON_KEYPOINT_FLIP_MAP,
    COCO_PERSON_KEYPOINT_NAMES,
    KEYPOINT_CONNECTION_RULES,
)
from detectron2.data.detection_utils import create_keypoint_hflip_indices
from detectron2.modeling import build_model
from detectron2.structures import Boxes, Instances

from dd_detectron import add_dd_config

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# ------------------------------------------------------------------------------------------
# Tiny models: an R-CNN FPN of every head, small enough to train for a few iterations
# ------------------------------------------------------------------------------------------


# The tiny sizes, on top of any R-CNN FPN config.
_TINY = [
    "MODEL.DEVICE",
    "cpu",
    "MODEL.BACKBONE.NAME",
    "build_narrow_resnet_fpn_backbone",
    "MODEL.RESNETS.DEPTH",
    18,
    "MODEL.RESNETS.STEM_OUT_CHANNELS",
    8,
    "MODEL.RESNETS.RES2_OUT_CHANNELS",
    8,
    "MODEL.FPN.OUT_CHANNELS",
    16,
    "MODEL.ROI_KEYPOINT_HEAD.CONV_DIMS",
    (16, 16),
    "MODEL.ROI_BOX_HEAD.FC_DIM",
    32,
    # Unit-variance inputs keep random-weight heatmap logits finite after exp().
    "MODEL.PIXEL_STD",
    [57.0, 57.0, 57.0],
    "MODEL.RPN.POST_NMS_TOPK_TEST",
    50,
    # Random weights: keep every detection (TEST.DETECTIONS_PER_IMAGE of them).
    "MODEL.ROI_HEADS.SCORE_THRESH_TEST",
    0.0,
    "DATASETS.TEST",
    (),
    "INPUT.MAX_SIZE_TEST",
    1000,
    "TEST.AUG.MAX_SIZE",
    1000,
]


def tiny_keypoint_rcnn_cfg(*opts):
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(os.path.join(REPO, "configs", "Base-DD-Keypoint-RCNN-FPN.yaml"))
    cfg.merge_from_list(list(_TINY))
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_rcnn_cfg(mask, num_classes, *opts):
    """A tiny Mask R-CNN (mask True) or Faster R-CNN (False) of ``num_classes`` classes, from
    detectron2's model zoo R50-FPN configs."""
    cfg = get_cfg()
    add_dd_config(cfg)
    zoo = (
        "COCO-InstanceSegmentation/mask_rcnn_R_50_FPN_1x.yaml"
        if mask
        else "COCO-Detection/faster_rcnn_R_50_FPN_1x.yaml"
    )
    cfg.merge_from_file(model_zoo.get_config_file(zoo))
    cfg.merge_from_list(list(_TINY))
    cfg.merge_from_list(
        ["MODEL.ROI_HEADS.NUM_CLASSES", num_classes, "MODEL.ROI_MASK_HEAD.CONV_DIM", 16]
    )
    cfg.merge_from_list(list(opts))
    return cfg


def tiny_model(cfg, seed=0):
    torch.manual_seed(seed)
    return build_model(cfg).eval()


# ------------------------------------------------------------------------------------------
# Processes: byte reads, a crash injected into the backbone, torchrun and spawn
# ------------------------------------------------------------------------------------------


def read_bytes(path):
    with open(path, "rb") as f:
        return f.read()


def crash_after(model, num_backbone_calls):
    """Make ``model`` raise "simulated crash" once its backbone has run ``num_backbone_calls``
    times. Returns (the hook's handle, the list that counts the backbone calls)."""
    calls = []

    def hook(module, inputs):
        calls.append(1)
        if len(calls) > num_backbone_calls:
            raise RuntimeError("simulated crash")

    return model.backbone.register_forward_pre_hook(hook), calls


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def child_env(repo, **variables):
    """The environment of a child process that runs this checkout's tools: the current one, with
    ``repo`` put in front of PYTHONPATH (kept, not replaced: packages installed into a target
    folder are found through it) and ``variables`` set."""
    search_path = os.pathsep.join(filter(None, [str(repo), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, PYTHONPATH=search_path, **variables)


def torchrun_env(rank, world_size, port):
    """The variables torchrun gives each worker of a one-machine job on localhost."""
    return dict(
        RANK=str(rank),
        WORLD_SIZE=str(world_size),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world_size),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
    )


def spawn_annotation(worker, model, dataset_names, out, tmp_path, world_size=2):
    """Run ``worker(rank, world_size, port, state_path, files, dataset_names, out)`` in
    ``world_size`` new processes, where ``state_path`` holds ``model``'s weights and ``files``
    the (json_file, image_root) of each registered dataset, for the worker to register again."""
    state_path = str(tmp_path / "model.pth")
    torch.save(model.state_dict(), state_path)
    files = [
        (MetadataCatalog.get(n).json_file, MetadataCatalog.get(n).image_root) for n in dataset_names
    ]
    torch.multiprocessing.spawn(
        worker,
        args=(world_size, free_port(), state_path, files, list(dataset_names), out),
        nprocs=world_size,
    )


# ------------------------------------------------------------------------------------------
# The ensembler's inputs: one image size, a keypoint flip map, models of every head
# ------------------------------------------------------------------------------------------
TTA_META = "dd_test_tta_keypoint_meta"

MetadataCatalog.get(TTA_META).set(
    keypoint_names=COCO_PERSON_KEYPOINT_NAMES, keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP
)

FLIP_INDICES = create_keypoint_hflip_indices([TTA_META])

H, W = 96, 120  # W is not a multiple of 32: the batch is padded on the right


def tta_cfg(*opts):
    """The tiny model at H, one identity view, 5 detections per image."""
    return tiny_keypoint_rcnn_cfg(
        "TEST.DETECTIONS_PER_IMAGE",
        5,
        "DATASETS.TRAIN",
        (TTA_META,),
        "INPUT.MIN_SIZE_TEST",
        H,
        "TEST.AUG.MIN_SIZES",
        (H,),
        "TEST.AUG.FLIP",
        False,
        *opts,
    )


def random_image(seed=0, h=H, w=W):
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (3, h, w), dtype=torch.uint8, generator=g)


def run_ensembler(model, image):
    with torch.no_grad():
        return model([{"image": image, "height": image.shape[1], "width": image.shape[2]}])[0][
            "instances"
        ]


def mirror_boxes(boxes, width):
    return torch.stack([width - boxes[:, 2], boxes[:, 1], width - boxes[:, 0], boxes[:, 3]], dim=1)


def match_boxes(a, b):
    """Index of the nearest box of b for every box of a (a permutation, asserted)."""
    dist = torch.cdist(a, b, p=1)
    order = dist.argmin(dim=1)
    assert len(set(order.tolist())) == len(a)
    return order


# MODEL.MASK_ON, MODEL.KEYPOINT_ON of each kind of model.
HEADS = {
    "box": (False, False),
    "mask": (True, False),
    "keypoint": (False, True),
    "mask_keypoint": (True, True),
}


def heads_cfg(heads, *opts):
    """The tiny model with the given heads, 3 classes (the mask channel is the box's class)."""
    mask_on, keypoint_on = HEADS[heads]
    return tta_cfg(
        "MODEL.MASK_ON",
        mask_on,
        "MODEL.KEYPOINT_ON",
        keypoint_on,
        "MODEL.ROI_HEADS.NUM_CLASSES",
        1 if keypoint_on else 3,
        "MODEL.ROI_MASK_HEAD.NUM_CONV",
        2,
        "MODEL.ROI_MASK_HEAD.CONV_DIM",
        16,
        *opts,
    )


def heads_model(cfg, seed=0):
    model = tiny_model(cfg, seed)
    if cfg.MODEL.MASK_ON:
        # detectron2 initialises the mask predictor with std 0.001: every probability would be
        # about 0.5 and the hard masks a coin toss at the threshold. Spread the logits.
        with torch.no_grad():
            model.roi_heads.mask_head.predictor.weight.mul_(1000.0)
    return model


# ------------------------------------------------------------------------------------------
# Toy datasets in tmp folders: keypoints for the loaders, people and categories for the
# annotation stage
# ------------------------------------------------------------------------------------------
# Two orientations, so that aspect-ratio grouping has two buckets to fill.
TOY_SIZES = ((64, 48), (48, 64), (80, 60))


def write_toy_keypoints(
    directory, num_images, *, seed=0, persons=2, num_keypoints=17, keypoints=True, annotations=True
):
    """Write a tiny COCO person-keypoints dataset (images + JSON) into ``directory``.

    Image file names are written as absolute paths, as detectron2's convert_to_coco_dict does,
    so the JSON needs no image root.

    Returns:
        the JSON path.
    """
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(directory, "images"), exist_ok=True)
    images, anns = [], []
    for i in range(num_images):
        w, h = TOY_SIZES[i % len(TOY_SIZES)]
        path = os.path.join(directory, "images", f"{seed}_{i:04d}.jpg")
        cv2.imwrite(path, rng.integers(0, 255, (h, w, 3), dtype=np.uint8))
        images.append({"id": i + 1, "file_name": path, "width": w, "height": h})
        for _ in range(persons if annotations else 0):
            x0, y0 = float(rng.uniform(0, w / 2)), float(rng.uniform(0, h / 2))
            bw, bh = w / 3.0, h / 2.0
            kps = []
            for _ in range(num_keypoints):
                kps += [float(rng.uniform(x0, x0 + bw)), float(rng.uniform(y0, y0 + bh)), 2]
            ann = {
                "id": len(anns) + 1,
                "image_id": i + 1,
                "category_id": 1,
                "iscrowd": 0,
                "bbox": [x0, y0, bw, bh],
                "area": bw * bh,
            }
            if keypoints:
                ann["keypoints"], ann["num_keypoints"] = kps, num_keypoints
            anns.append(ann)
    data = {
        "images": images,
        "annotations": anns,
        "categories": [
            {
                "id": 1,
                "name": "person",
                "keypoints": list(COCO_PERSON_KEYPOINT_NAMES)[:num_keypoints],
            }
        ],
    }
    json_file = os.path.join(directory, f"toy_{seed}.json")
    with open(json_file, "w") as f:
        json.dump(data, f)
    return json_file


def register_toy_labeled(directory, num_images, seed=0):
    """Register a toy labeled dataset with COCO person keypoint metadata; returns its name."""
    name = f"toy_labeled_{uuid.uuid4().hex[:8]}"
    json_file = write_toy_keypoints(directory, num_images, seed=seed)
    register_coco_instances(
        name,
        {
            "keypoint_names": COCO_PERSON_KEYPOINT_NAMES,
            "keypoint_flip_map": COCO_PERSON_KEYPOINT_FLIP_MAP,
            "thing_classes": ["person"],
        },
        json_file,
        "",
    )
    return name


K = 17

KEYPOINT_META = dict(
    thing_classes=["person"],
    thing_dataset_id_to_contiguous_id={1: 0},
    keypoint_names=COCO_PERSON_KEYPOINT_NAMES,
    keypoint_flip_map=COCO_PERSON_KEYPOINT_FLIP_MAP,
    keypoint_connection_rules=KEYPOINT_CONNECTION_RULES,
)


def _write_images(root, n, seed, rng, size, extra_files=()):
    """``n`` random JPEGs of ``size`` (height, width) in ``root``, drawn from ``rng`` and named
    after ``seed``, then ``extra_files`` ((file_name, bytes or None): written when given, listed
    either way); their COCO records."""
    os.makedirs(root, exist_ok=True)
    images = []
    for i in range(n):
        name = f"img_{seed}_{i}.jpg"
        cv2.imwrite(os.path.join(root, name), rng.integers(0, 256, size + (3,), dtype=np.uint8))
        images.append({"id": 100 + i, "file_name": name, "height": size[0], "width": size[1]})
    for j, (name, data) in enumerate(extra_files):
        if data is not None:
            with open(os.path.join(root, name), "wb") as f:
                f.write(data)
        images.append({"id": 900 + j, "file_name": name, "height": size[0], "width": size[1]})
    return images


def _person(rng, num_visible):
    keypoints = []
    for k in range(K):
        v = 2 if k < num_visible else 0
        keypoints += [float(rng.uniform(10, 60)), float(rng.uniform(10, 60)), v] if v else [0, 0, 0]
    return {
        "bbox": [5.0, 5.0, 50.0, 60.0],
        "area": 3000.0,
        "iscrowd": 0,
        "category_id": 1,
        "keypoints": keypoints,
        "num_keypoints": num_visible,
    }


def make_keypoint_dataset(
    root, n, seed, annotations_per_image=None, num_visible=10, extra_files=()
):
    """Write a tiny COCO person_keypoints set and register it; returns its name.

    Args:
        annotations_per_image: list of instance counts per image, or None for no annotations.
        extra_files: (file_name, bytes or None) of bad images to list in the JSON (None: missing).
    """
    images = _write_images(root, n, seed, np.random.default_rng(seed), (72, 96), extra_files)
    coco = {
        "images": images,
        "categories": [{"id": 1, "name": "person", "keypoints": list(COCO_PERSON_KEYPOINT_NAMES)}],
    }
    if annotations_per_image is not None:
        rng = np.random.default_rng(seed)
        anns = []
        for img, count in zip(images, annotations_per_image):
            for _ in range(count):
                anns.append(dict(_person(rng, num_visible), id=len(anns) + 1, image_id=img["id"]))
        coco["annotations"] = anns
    json_file = os.path.join(root, "annotations.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    name = f"dd_test_annotate_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, KEYPOINT_META, json_file, root)
    return name


def annotate_cfg(labeled, unlabeled, *opts):
    return tiny_keypoint_rcnn_cfg(
        "TEST.DETECTIONS_PER_IMAGE",
        4,
        "DATASETS.TRAIN",
        (labeled,),
        "DATALOADER.NUM_WORKERS",
        0,
        "INPUT.MIN_SIZE_TEST",
        72,
        "TEST.AUG.ENABLED",
        True,
        "TEST.AUG.MIN_SIZES",
        (72, 88),
        "TEST.AUG.FLIP",
        True,
        "DD.ANNOTATE.DATASETS",
        (unlabeled,),
        "DD.ANNOTATE.SAVE_PERIOD",
        2,
        "DD.TTA.VIEW_BATCH_SIZE",
        2,  # a view with its flip: 2 backbone passes per image
        *opts,
    )


def fake_keypoint_instances(scores, keypoint_scores):
    n = len(scores)
    inst = Instances((50, 60))
    inst.pred_boxes = Boxes(
        torch.tensor([[1.0 + i, 2.0, 30.0 + i, 40.0] for i in range(n)]).reshape(n, 4)
    )
    inst.scores = torch.tensor(scores, dtype=torch.float32)
    inst.pred_classes = torch.zeros(n, dtype=torch.int64)
    kp = torch.zeros(n, K, 3)
    kp[:, :, 0] = torch.arange(K, dtype=torch.float32) + 0.25
    kp[:, :, 1] = 7.75
    kp[:, :, 2] = torch.tensor(keypoint_scores, dtype=torch.float32).reshape(n, K)
    inst.pred_keypoints = kp
    return inst


# Dataset category ids that are not 0..n-1, so that the id mapping is exercised.
CATEGORIES = [(3, "cat"), (5, "dog"), (8, "bird")]

SIZE = (64, 80)  # height, width of every test image


def _rectangle(x0, y0, x1, y1):
    return [[x0, y0, x1, y0, x1, y1, x0, y1]]


def make_category_dataset(root, n, seed, categories_per_image=None, masks=True, extra_files=()):
    """Write a tiny multi-category COCO instances set and register it; returns its name.

    Args:
        categories_per_image: per image, the category indices (into CATEGORIES) of its
            instances; None: no annotations.
        masks: give every instance a polygon segmentation.
        extra_files: (file_name, bytes) of unreadable images to list too.
    """
    rng = np.random.default_rng(seed)
    images = _write_images(root, n, seed, rng, SIZE, extra_files)
    coco = {"images": images, "categories": [{"id": i, "name": c} for i, c in CATEGORIES]}
    if categories_per_image is not None:
        anns = []
        for img, cats in zip(images, categories_per_image):
            for c in cats:
                x0, y0 = (float(v) for v in rng.integers(2, 30, 2))
                x1, y1 = x0 + float(rng.integers(10, 40)), y0 + float(rng.integers(10, 30))
                ann = {
                    "id": len(anns) + 1,
                    "image_id": img["id"],
                    "category_id": CATEGORIES[c][0],
                    "bbox": [x0, y0, x1 - x0, y1 - y0],
                    "area": (x1 - x0) * (y1 - y0),
                    "iscrowd": 0,
                }
                if masks:
                    ann["segmentation"] = _rectangle(x0, y0, x1, y1)
                anns.append(ann)
        coco["annotations"] = anns
    json_file = os.path.join(root, "annotations.json")
    with open(json_file, "w") as f:
        json.dump(coco, f)
    name = f"dd_test_any_head_{uuid.uuid4().hex[:8]}"
    register_coco_instances(name, {}, json_file, root)
    return name
