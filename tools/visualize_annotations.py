#!/usr/bin/env python
"""
Draw generated keypoint labels (the annotation stage's JSON) on their images with detectron2's
Visualizer: boxes, category names and the keypoints labeled visible (v = 2) with their skeleton.

    python tools/visualize_annotations.py --json DIR/person_keypoints_generated.json --output VIS
    python tools/visualize_annotations.py --json FILE --output VIS --num-images 50 --min-score 0.8

One JPEG per image, named after its image id. The keypoint names and skeleton come from the
file's categories; image file names are joined to --image-root (default "": as written).
"""

import argparse
import json
import logging
import os

import cv2
from detectron2.data import MetadataCatalog
from detectron2.data.datasets import load_coco_json
from detectron2.data.detection_utils import read_image
from detectron2.utils.logger import setup_logger
from detectron2.utils.visualizer import Visualizer

logger = logging.getLogger("dd_detectron.visualize_annotations")

# Limb color of the skeleton drawn from the file's categories (RGB).
_LIMB_COLOR = (102, 204, 255)


def register_json(json_file: str) -> str:
    """Load the file as a detectron2 dataset with keypoint metadata from its categories.

    Returns:
        the metadata name (dataset dicts are returned by :func:`load`).
    """
    with open(json_file) as f:
        categories = json.load(f)["categories"]
    name = f"dd_visualize:{os.path.abspath(json_file)}"
    keypoint_names = categories[0].get("keypoints", [])
    rules = [
        (keypoint_names[a - 1], keypoint_names[b - 1], _LIMB_COLOR)
        for a, b in categories[0].get("skeleton", [])
    ]
    MetadataCatalog.get(name).set(keypoint_names=keypoint_names, keypoint_connection_rules=rules)
    return name


def main(args):
    setup_logger(name="dd_detectron")
    name = register_json(args.json)
    dicts = load_coco_json(args.json, args.image_root, name, extra_annotation_keys=["score"])
    metadata = MetadataCatalog.get(name)
    os.makedirs(args.output, exist_ok=True)
    for record in dicts[: args.num_images] if args.num_images > 0 else dicts:
        record = dict(record)
        record["annotations"] = [
            a for a in record.get("annotations", []) if a.get("score", 1.0) >= args.min_score
        ]
        image = read_image(record["file_name"], format="RGB")
        drawn = Visualizer(image, metadata, scale=args.scale).draw_dataset_dict(record)
        path = os.path.join(args.output, f"{record['image_id']}.jpg")
        cv2.imwrite(path, drawn.get_image()[:, :, ::-1])
    logger.info(
        "Drew %d images into %s",
        min(len(dicts), args.num_images) if args.num_images > 0 else len(dicts),
        args.output,
    )


def argument_parser():
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--json", required=True, help="a generated COCO person_keypoints JSON")
    parser.add_argument("--output", required=True, help="directory of the drawn images")
    parser.add_argument("--image-root", default="", help="joined to the file names in the JSON")
    parser.add_argument(
        "--num-images", type=int, default=0, help="draw the first N images (0: all)"
    )
    parser.add_argument(
        "--min-score", type=float, default=0.0, help="draw labels with score >= this"
    )
    parser.add_argument("--scale", type=float, default=1.0, help="drawing scale of the Visualizer")
    return parser


if __name__ == "__main__":
    main(argument_parser().parse_args())
