"""Every YAML config in configs/ loads on top of detectron2's defaults and add_dd_config."""

from pathlib import Path

import pytest
import yaml
from detectron2.config import get_cfg

from dd_detectron import add_dd_config
from dd_detectron.config import parse_threshold

CONFIGS = sorted(
    str(p) for p in (Path(__file__).resolve().parent.parent / "configs").rglob("*.yaml")
)


def test_every_config_that_a_config_names_is_one_of_them():
    """Each ``_BASE_`` and each pipeline stage config (``DD.PIPELINE.*_CONFIG``) resolves to a
    file in configs/, so test_config_loads loads it too."""
    named = set()
    for config_file in CONFIGS:
        with open(config_file) as f:
            data = yaml.safe_load(f) or {}
        stages = ((data.get("DD") or {}).get("PIPELINE") or {}).items()
        refs = [data["_BASE_"]] if "_BASE_" in data else []
        refs += [v for k, v in stages if k.endswith("_CONFIG") and v]
        for ref in refs:
            path = str((Path(config_file).parent / ref).resolve())
            assert path in CONFIGS, f"{config_file} names {ref}, which is not in configs/"
            named.add(path)
    assert any(p.endswith("Base-DD-Keypoint-RCNN-FPN.yaml") for p in named)
    assert any(p.endswith("Base-DD-Mask-RCNN-FPN.yaml") for p in named)
    assert any(p.endswith("teacher_R50-FPN_130k_co115.yaml") for p in named)  # by a pipeline


@pytest.mark.parametrize("config_file", CONFIGS, ids=lambda p: p.split("configs/")[-1])
def test_config_loads(config_file):
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(config_file)
    # Keypoint R-CNN, or Mask R-CNN where the file's folder or name says so.
    name = Path(config_file).name.lower()
    if "/COCO-InstanceSegmentation/" in config_file or "mask" in name:
        assert cfg.MODEL.MASK_ON and not cfg.MODEL.KEYPOINT_ON
    else:
        assert cfg.MODEL.KEYPOINT_ON and not cfg.MODEL.MASK_ON
        assert cfg.MODEL.ROI_KEYPOINT_HEAD.NUM_KEYPOINTS == 17
    assert 0.0 < cfg.DD.STUDENT.LABELED_FRACTION < 1.0
    parse_threshold(cfg.DD.ANNOTATE.SCORE_THRESH, "DD.ANNOTATE.SCORE_THRESH")
    parse_threshold(cfg.DD.ANNOTATE.KEYPOINT_THRESH, "DD.ANNOTATE.KEYPOINT_THRESH")


def test_parse_threshold():
    assert parse_threshold("auto", "K") is None
    assert parse_threshold(" AUTO ", "K") is None
    assert parse_threshold("0.25", "K") == 0.25
    assert parse_threshold(0.5, "K") == 0.5
    with pytest.raises(
        ValueError, match=r"DD\.ANNOTATE\.SCORE_THRESH must be 'auto' or a number, got 'high'"
    ):
        parse_threshold("high", "DD.ANNOTATE.SCORE_THRESH")
