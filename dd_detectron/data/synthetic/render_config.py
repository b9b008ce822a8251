"""The knobs of the synthetic image generator (figures, scenes, photometrics) in one dataclass.

A split's ``RenderConfig`` is part of its spec, and so of the fingerprint that decides whether
its files are up to date (see splits.py): any change to a default here regenerates the splits.
"""

from dataclasses import dataclass
from typing import Tuple

__all__ = [
    "RenderConfig",
    "POSE_TYPES",
    "YAW_CLASSES",
    "DISTRACTOR_KINDS",
    "BACKGROUND_STYLES",
    "LR_COLOR_MODES",
]

POSE_TYPES = ("standing", "walking", "gesturing", "crouching", "sitting", "one_leg", "random")
YAW_CLASSES = ("front", "three_quarter", "profile", "back")
DISTRACTOR_KINDS = ("blob", "stick", "limb", "disc")
BACKGROUND_STYLES = ("clutter", "field", "plain")
LR_COLOR_MODES = ("fixed", "per_person", "none")


@dataclass(frozen=True)
class RenderConfig:
    """Every knob of the image generator; defaults are those of the labeled split.

    Difficulty mostly comes from ``person_height_mix`` (small people are hard),
    ``num_distractors`` / ``distractor_kinds`` (limb-like false positives), ``occluder_*``
    (occluded keypoints), ``noise_sigma`` and ``motion_blur`` (appearance), and ``pose_weights``
    / ``max_tilt_deg`` (pose variety).
    """

    # Image width and height are drawn independently and uniformly from these closed ranges.
    width_range: Tuple[int, int] = (160, 256)
    height_range: Tuple[int, int] = (160, 256)
    # One of BACKGROUND_STYLES: "clutter" (gradients, noise, textures, lines), "field" (a
    # sports ground with court lines and a crowd band), "plain" (one colour, for debugging).
    background: str = "clutter"
    # P(number of people in an image = i) for i = 0 .. len - 1 (normalised here).
    num_people_weights: Tuple[float, ...] = (0.05, 0.3, 0.3, 0.17, 0.11, 0.07)
    # Standing body height in pixels (top of head to ankles): a mixture of log-uniform ranges,
    # (weight, min_px, max_px). Silhouette area is about 0.1-0.15 * height^2, so heights below
    # ~90 px give COCO "small" people (< 32^2 px), above ~280 px "large" ones (> 96^2 px), which
    # on these small images means close-ups truncated by the border.
    person_height_mix: Tuple[Tuple[float, float, float], ...] = (
        (0.25, 28.0, 90.0),
        (0.55, 90.0, 220.0),
        (0.20, 220.0, 360.0),
    )
    # (pose type, weight) over POSE_TYPES.
    pose_weights: Tuple[Tuple[str, float], ...] = (
        ("standing", 0.28),
        ("walking", 0.2),
        ("gesturing", 0.16),
        ("crouching", 0.1),
        ("sitting", 0.1),
        ("one_leg", 0.08),
        ("random", 0.08),
    )
    # (yaw class, weight) over YAW_CLASSES: front |yaw| < 30, three-quarter 30..65,
    # profile 65..115, back 145..215 degrees (0 faces the camera).
    yaw_weights: Tuple[Tuple[str, float], ...] = (
        ("front", 0.45),
        ("three_quarter", 0.25),
        ("profile", 0.15),
        ("back", 0.15),
    )
    # In-plane rotation of a whole figure, uniform in +-max_tilt_deg ("random" poses: 3x).
    max_tilt_deg: float = 10.0
    # How far (fraction of the figure's box) a figure may stick out of the image.
    truncation: float = 0.3
    # Probability that a figure is placed next to the previous one (mutual occlusion).
    cluster_prob: float = 0.35
    # Closed range of the number of distractor shapes per image.
    num_distractors: Tuple[int, int] = (2, 7)
    # (kind, weight) over DISTRACTOR_KINDS; "limb" are jointed sticks in limb colours.
    distractor_kinds: Tuple[Tuple[str, float], ...] = (
        ("blob", 0.3),
        ("stick", 0.2),
        ("limb", 0.35),
        ("disc", 0.15),
    )
    # Probability that a distractor is drawn in front of every figure, and that it is centred
    # on a random keypoint of a random figure (so it actually hides something).
    occluder_front_prob: float = 0.35
    occluder_on_person_prob: float = 0.5
    # One of LR_COLOR_MODES. "fixed": left limbs warm (red/orange/yellow) and right limbs cool
    # (blue/cyan), band on the left wrist; appearance alone says which side is which, as a
    # horizontally flipped image then shows warm limbs labeled right. "per_person": the two
    # families (and marks) swap sides at random per figure, so only the face and body geometry
    # tell left from right (flip-symmetric like real people). "none": both sides alike.
    lr_color_mode: str = "per_person"
    # If True, the shirts of an image come from two "team" colours (sports scenes).
    team_colors: bool = False
    # Photometrics: per-pixel Gaussian noise (std, grey levels), horizontal motion blur length
    # range in px (0 = none), and global contrast / brightness jitter.
    noise_sigma: float = 6.0
    motion_blur: Tuple[int, int] = (0, 0)
    contrast_range: Tuple[float, float] = (0.8, 1.2)
    brightness_range: Tuple[float, float] = (-20.0, 20.0)
    # People whose visible silhouette has fewer pixels are drawn but not annotated.
    min_visible_area: int = 16
    # People whose visible silhouette is smaller (COCO's "small", < 32^2 px) keep their box but
    # carry no keypoints (all v = 0, num_keypoints 0): COCO reports keypoint AP for medium and
    # large people only, and a 17-point skeleton inside a box a few pixels wide is noise.
    min_keypoint_area: int = 32 * 32
