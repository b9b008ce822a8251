"""The embedded synthetic person-keypoint data: demo data, not part of the method.

A generator of images of human-like figures with exact COCO person keypoints and instance masks
(of each person's visible pixels), and the splits it writes:

    render_config.py  RenderConfig, every knob of the generator
    figure.py         one figure: pose, appearance, drawable parts, true keypoints
    scene.py          one image: background, figures and distractors, drawn and annotated
    splits.py         the split table, where a split's files are, their (re)generation

Registering the splits in DatasetCatalog is dd_detectron/data/datasets/synthetic.py's job
(run for the builtin splits by dd_detectron/data/datasets/builtin.py).
"""

from .render_config import RenderConfig
from .splits import (
    DEMO_SYNTHETIC_SPLITS,
    SYNTHETIC_SPLITS,
    TINY_SYNTHETIC_SPLITS,
    SplitFiles,
    SyntheticSplit,
    ensure_split,
    generate_split,
    is_split_complete,
    split_files,
)

__all__ = [
    "RenderConfig",
    "SyntheticSplit",
    "SplitFiles",
    "SYNTHETIC_SPLITS",
    "TINY_SYNTHETIC_SPLITS",
    "DEMO_SYNTHETIC_SPLITS",
    "split_files",
    "generate_split",
    "is_split_complete",
    "ensure_split",
]
