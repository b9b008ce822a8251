"""One human-like figure with true COCO person keypoints: pose, appearance, drawable parts.

A figure is a small 3D skeleton (body yaw, torso lean, per-joint angles) projected
orthographically, then laid out as thick capsules (limbs), a convex torso and a head with a face.
Left limbs and right limbs are drawn in different colour families and carry asymmetrical marks
(a light band on the left wrist, a dark patch on the right knee), and the face (eyes, nose,
mouth, hair) shows which way the head points, so left and right can be told apart in the image.
scene.py draws figures and decides which keypoints are seen.

Coordinates: "continuous" image coordinates as in detectron2, pixel (i, j) covers
[i, i+1) x [j, j+1) and its centre is at (i + 0.5, j + 0.5). OpenCV drawing and COCO JSON
keypoints both use pixel-index coordinates (centre at an integer), i.e. continuous - 0.5.
"""

import colorsys
import math
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence, Tuple

import cv2
import numpy as np
from detectron2.data.datasets.builtin_meta import COCO_PERSON_KEYPOINT_NAMES

from .render_config import LR_COLOR_MODES, POSE_TYPES, YAW_CLASSES, RenderConfig

__all__ = [
    "Pose",
    "Appearance",
    "Part",
    "Figure",
    "NUM_KEYPOINTS",
    "sample_pose",
    "sample_appearance",
    "build_figure",
    "sample_figure",
]

Color = Tuple[int, int, int]  # BGR, as OpenCV draws

NUM_KEYPOINTS = len(COCO_PERSON_KEYPOINT_NAMES)
_KP_INDEX = {name: i for i, name in enumerate(COCO_PERSON_KEYPOINT_NAMES)}

# Part ids inside one figure. scene.py's id map stores 1 + figure_slot * _PARTS_PER_FIGURE +
# part id (0 = background, 0xFFFF = any distractor), so one uint16 map holds 4000+ figures.
TORSO, HEAD, L_UPPER_ARM, L_FOREARM, R_UPPER_ARM, R_FOREARM, L_THIGH, L_SHIN, R_THIGH, R_SHIN = (
    range(10)
)
_PARTS_PER_FIGURE = 16

# A keypoint counts as seen (v = 2) when the pixel under it shows one of these parts of its own
# figure; anything else in front (another figure, a distractor, or the figure's own arm or
# torso) makes it occluded (v = 1).
_KEYPOINT_PARTS = {
    "nose": (HEAD,),
    "left_eye": (HEAD,),
    "right_eye": (HEAD,),
    "left_ear": (HEAD,),
    "right_ear": (HEAD,),
    "left_shoulder": (TORSO, L_UPPER_ARM),
    "right_shoulder": (TORSO, R_UPPER_ARM),
    "left_elbow": (L_UPPER_ARM, L_FOREARM),
    "right_elbow": (R_UPPER_ARM, R_FOREARM),
    "left_wrist": (L_FOREARM,),
    "right_wrist": (R_FOREARM,),
    "left_hip": (TORSO, L_THIGH),
    "right_hip": (TORSO, R_THIGH),
    "left_knee": (L_THIGH, L_SHIN),
    "right_knee": (R_THIGH, R_SHIN),
    "left_ankle": (L_SHIN,),
    "right_ankle": (R_SHIN,),
}
_ALLOWED_PARTS = np.zeros((NUM_KEYPOINTS, _PARTS_PER_FIGURE), dtype=bool)
for _name, _parts in _KEYPOINT_PARTS.items():
    _ALLOWED_PARTS[_KP_INDEX[_name], list(_parts)] = True


@dataclass(frozen=True)
class Pose:
    """Joint angles of one figure, in degrees.

    The body frame has axes L (the person's left), F (forward) and D (down). ``yaw`` turns the
    body about the vertical: 0 faces the camera (the person's left is on the image's right),
    +90 faces image-right, 180 shows the back.
    """

    yaw: float
    head_turn: float  # head yaw relative to the body
    lean_forward: float
    lean_side: float  # towards the person's left
    tilt: float  # in-plane rotation of the whole projected figure
    # Per arm (left, right): (abduction, flexion, elbow bend, forearm twist). Abduction 0 hangs
    # down, 90 points sideways, 180 up; flexion swings forward; positive twist turns the
    # forearm towards the body's midline.
    arms: Tuple[Tuple[float, float, float, float], Tuple[float, float, float, float]]
    # Per leg (left, right): (abduction, flexion, knee bend); knees bend backwards.
    legs: Tuple[Tuple[float, float, float], Tuple[float, float, float]]


@dataclass(frozen=True)
class Appearance:
    """Colours and build of one figure. ``limbs`` maps part id -> colour for the 8 limb parts."""

    skin: Color
    hair: Color
    shirt: Color
    shoes: Color
    limbs: Tuple[Tuple[int, Color], ...]
    band: Color  # mark on one wrist
    patch: Color  # mark on the other side's knee
    band_on_left: bool  # the band is on the left wrist (and the patch on the right knee)
    build: float  # limb thickness factor
    head_scale: float
    marks: bool = True


@dataclass
class Part:
    """One drawable primitive; ``points`` are continuous image coordinates.

    kind "capsule": 2 points, ``size`` = thickness; "polygon": convex, n points;
    "circle": 1 point, ``size`` = radius. Parts are drawn in increasing ``z`` (towards camera).
    """

    part_id: int
    kind: str
    points: np.ndarray
    size: float
    color: Color
    z: float


@dataclass
class Figure:
    """A figure ready to draw.

    Attributes:
        keypoints: (17, 2) true keypoint positions, continuous coordinates, COCO order.
        self_visible: (17,) False where the keypoint is hidden by its own head (face points
            turned away from the camera); body self-occlusion comes from the id map instead.
        parts: primitives to draw.
        depth: scene depth; larger is farther (drawn earlier).
        allowed_parts: (17, 16) bool, which of its own parts may show at a keypoint's pixel
            for it to count as seen; None means the default table. A shoulder or hip on the
            far side of a turned body is behind the torso, so there the torso does not count.
    """

    keypoints: np.ndarray
    self_visible: np.ndarray
    parts: List[Part]
    depth: float
    allowed_parts: Optional[np.ndarray] = None

    def translated(self, dx: float, dy: float) -> "Figure":
        """Returns a copy moved by (dx, dy) pixels."""
        d = np.array([dx, dy], dtype=np.float64)
        parts = [replace(p, points=p.points + d) for p in self.parts]
        return replace(self, keypoints=self.keypoints + d, parts=parts)

    def bounds(self) -> Tuple[float, float, float, float]:
        """Returns (x0, y0, x1, y1), the box of everything drawn for this figure."""
        return _parts_bounds(self.parts)


# ---------------------------------------------------------------------------------------------
# Small helpers
# ---------------------------------------------------------------------------------------------


def _hsv(h_deg: float, s: float, v: float) -> Color:
    s, v = min(max(s, 0.0), 1.0), min(max(v, 0.0), 1.0)
    r, g, b = colorsys.hsv_to_rgb((h_deg % 360.0) / 360.0, s, v)
    return (int(round(b * 255)), int(round(g * 255)), int(round(r * 255)))


def _random_color(rng: np.random.Generator) -> Color:
    return _hsv(rng.uniform(0, 360), rng.uniform(0.1, 1.0), rng.uniform(0.15, 1.0))


def _weighted_choice(rng: np.random.Generator, pairs: Sequence[Tuple[str, float]]) -> str:
    names = [p[0] for p in pairs]
    w = np.asarray([p[1] for p in pairs], dtype=np.float64)
    return names[int(rng.choice(len(names), p=w / w.sum()))]


def _unit(v: np.ndarray) -> np.ndarray:
    n = float(np.linalg.norm(v))
    return v / n if n > 1e-9 else v


def _limb_dir(side: float, abduction: float, flexion: float) -> np.ndarray:
    """Unit (L, F, D) direction: abduction towards ``side`` * L, flexion towards F."""
    a, f = math.radians(abduction), math.radians(flexion)
    return np.array([side * math.sin(a), math.cos(a) * math.sin(f), math.cos(a) * math.cos(f)])


def _bend(d: np.ndarray, pref: np.ndarray, angle: float, twist: float = 0.0) -> np.ndarray:
    """Rotates unit ``d`` by ``angle`` degrees towards ``pref`` (turned ``twist`` about d)."""
    n0 = pref - d * float(np.dot(pref, d))
    if np.linalg.norm(n0) < 1e-6:
        n0 = np.cross(d, np.array([1.0, 0.0, 0.0]))
    n0 = _unit(n0)
    if twist:
        t = math.radians(twist)
        n0 = n0 * math.cos(t) + np.cross(d, n0) * math.sin(t)
    a = math.radians(angle)
    return _unit(d * math.cos(a) + n0 * math.sin(a))


def _parts_bounds(parts: Sequence[Part]) -> Tuple[float, float, float, float]:
    x0 = y0 = math.inf
    x1 = y1 = -math.inf
    for p in parts:
        pad = p.size if p.kind == "circle" else p.size / 2.0
        x0 = min(x0, float(p.points[:, 0].min()) - pad)
        y0 = min(y0, float(p.points[:, 1].min()) - pad)
        x1 = max(x1, float(p.points[:, 0].max()) + pad)
        y1 = max(y1, float(p.points[:, 1].max()) + pad)
    return x0, y0, x1, y1


# ---------------------------------------------------------------------------------------------
# Poses and appearance
# ---------------------------------------------------------------------------------------------


def _sample_yaw(rng: np.random.Generator, cfg: RenderConfig) -> float:
    cls = _weighted_choice(rng, cfg.yaw_weights)
    sign = 1.0 if rng.random() < 0.5 else -1.0
    if cls == "front":
        return rng.uniform(-30.0, 30.0)
    if cls == "three_quarter":
        return sign * rng.uniform(30.0, 65.0)
    if cls == "profile":
        return sign * rng.uniform(65.0, 115.0)
    if cls == "back":
        return 180.0 + rng.uniform(-35.0, 35.0)
    raise ValueError(f"Unknown yaw class {cls!r}; expected one of {YAW_CLASSES}")


def sample_pose(
    rng: np.random.Generator, cfg: RenderConfig, pose_type: Optional[str] = None
) -> Pose:
    """Samples joint angles.

    Args:
        rng: random generator (consumed in a fixed order, so results are reproducible).
        cfg: supplies pose_weights, yaw_weights and max_tilt_deg.
        pose_type: one of POSE_TYPES; None samples it from ``cfg.pose_weights``.

    Returns:
        a Pose.
    """
    u = rng.uniform
    if pose_type is None:
        pose_type = _weighted_choice(rng, cfg.pose_weights)
    if pose_type not in POSE_TYPES:
        raise ValueError(f"Unknown pose type {pose_type!r}; expected one of {POSE_TYPES}")
    yaw = _sample_yaw(rng, cfg)
    head_turn = u(-45.0, 45.0)
    tilt = u(-cfg.max_tilt_deg, cfg.max_tilt_deg)

    def arm_rest():
        return (u(-5, 35), u(-20, 30), u(0, 50), u(-60, 60))

    def leg_stand():
        return (u(-3, 12), u(-8, 12), u(0, 12))

    lean_f, lean_s = u(-5, 10), u(-6, 6)
    if pose_type == "standing":
        arms = (arm_rest(), arm_rest())
        legs = (leg_stand(), leg_stand())
    elif pose_type == "walking":
        s = 1.0 if rng.random() < 0.5 else -1.0
        legs = (
            (u(0, 6), s * u(15, 35), u(0, 20) if s > 0 else u(10, 45)),
            (u(0, 6), -s * u(15, 35), u(10, 45) if s > 0 else u(0, 20)),
        )
        arms = (
            (u(0, 20), -s * u(10, 35), u(10, 60), u(-30, 30)),
            (u(0, 20), s * u(10, 35), u(10, 60), u(-30, 30)),
        )
    elif pose_type == "gesturing":
        raised = [rng.random() < 0.6, rng.random() < 0.6]
        if not any(raised):
            raised[int(rng.integers(2))] = True
        arms = tuple(
            (u(60, 175), u(-20, 60), u(0, 130), u(-90, 90)) if r else arm_rest() for r in raised
        )
        legs = (leg_stand(), leg_stand())
    elif pose_type == "crouching":
        lean_f = u(20, 50)
        legs = tuple((u(10, 35), u(70, 115), u(100, 145)) for _ in range(2))
        arms = tuple((u(0, 40), u(20, 80), u(20, 110), u(-60, 60)) for _ in range(2))
    elif pose_type == "sitting":
        lean_f = u(-10, 15)
        legs = tuple((u(0, 20), u(75, 100), u(70, 105)) for _ in range(2))
        arms = tuple((u(0, 30), u(0, 50), u(20, 90), u(-60, 60)) for _ in range(2))
    elif pose_type == "one_leg":
        stand, lifted = (u(-3, 8), u(-5, 10), u(0, 10)), (u(0, 30), u(30, 95), u(50, 130))
        legs = (stand, lifted) if rng.random() < 0.5 else (lifted, stand)
        arms = tuple((u(30, 100), u(-20, 40), u(0, 60), u(-60, 60)) for _ in range(2))
    else:  # "random": sports-like, anything goes
        lean_f, lean_s = u(-20, 50), u(-20, 20)
        tilt = u(-3 * cfg.max_tilt_deg, 3 * cfg.max_tilt_deg)
        arms = tuple((u(-20, 180), u(-60, 120), u(0, 150), u(-90, 90)) for _ in range(2))
        legs = tuple((u(-10, 45), u(-30, 100), u(0, 130)) for _ in range(2))
    return Pose(yaw, head_turn, lean_f, lean_s, tilt, tuple(arms), tuple(legs))


_SKIN_TONES = ((60, 80, 120), (90, 120, 170), (120, 160, 210), (150, 190, 230), (45, 60, 90))
_HAIR = ((20, 20, 25), (30, 45, 70), (40, 70, 120), (150, 170, 190), (60, 60, 60))


def _family_color(rng: np.random.Generator, base_hue: float) -> Color:
    hue = base_hue + rng.uniform(-12, 12)
    return _hsv(hue, rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0))


def sample_appearance(
    rng: np.random.Generator, cfg: RenderConfig, shirt: Optional[Color] = None
) -> Appearance:
    """Samples colours and build.

    Args:
        rng: random generator.
        cfg: supplies lr_color_mode.
        shirt: a fixed shirt colour (team colours); None samples one.

    Returns:
        an Appearance.
    """
    if cfg.lr_color_mode not in LR_COLOR_MODES:
        raise ValueError(f"Unknown lr_color_mode {cfg.lr_color_mode!r}; expected {LR_COLOR_MODES}")
    tone = np.asarray(_SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))], dtype=np.float64)
    skin = tuple(int(c) for c in np.clip(tone + rng.uniform(-12, 12, 3), 0, 255))
    hair = _HAIR[int(rng.integers(len(_HAIR)))]
    drawn_shirt = _random_color(rng)
    shirt = drawn_shirt if shirt is None else shirt
    shoes = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.5), rng.uniform(0.05, 0.35))
    # Warm family hues around red/orange/yellow, cool ones around cyan/blue.
    warm_hue, cool_hue = rng.uniform(-20, 45), rng.uniform(175, 245)
    swap = rng.random() < 0.5
    left_warm = True
    if cfg.lr_color_mode == "per_person":
        left_warm = not swap
    left_hue, right_hue = (warm_hue, cool_hue) if left_warm else (cool_hue, warm_hue)
    if cfg.lr_color_mode == "none":
        right_hue = left_hue
    limbs = []
    for part in (L_UPPER_ARM, L_FOREARM, L_THIGH, L_SHIN):
        limbs.append((part, _family_color(rng, left_hue)))
    for part in (R_UPPER_ARM, R_FOREARM, R_THIGH, R_SHIN):
        limbs.append((part, _family_color(rng, right_hue)))
    band = _hsv(rng.uniform(40, 70), rng.uniform(0, 0.3), rng.uniform(0.9, 1.0))
    patch = _hsv(rng.uniform(0, 360), rng.uniform(0, 0.4), rng.uniform(0.0, 0.2))
    return Appearance(
        skin=skin,
        hair=hair,
        shirt=shirt,
        shoes=shoes,
        limbs=tuple(limbs),
        band=band,
        patch=patch,
        band_on_left=left_warm,
        build=rng.uniform(0.85, 1.3),
        head_scale=rng.uniform(0.9, 1.15),
        marks=cfg.lr_color_mode != "none",
    )


# ---------------------------------------------------------------------------------------------
# Figures
# ---------------------------------------------------------------------------------------------

# Body proportions in units of the standing height (head top to ankles ~= 1).
_TORSO, _NECK, _HEAD_R = 0.30, 0.125, 0.065
_SHOULDER, _HIP = 0.11, 0.085
_UPPER_ARM, _FOREARM, _HAND = 0.165, 0.15, 0.045
_THIGH, _SHIN, _FOOT = 0.245, 0.245, 0.06
_CHEST_DEPTH, _PELVIS_DEPTH = 0.07, 0.06
# Limb thicknesses (before the per-figure build factor).
_T_UPPER_ARM, _T_FOREARM, _T_THIGH, _T_SHIN, _T_NECK = 0.062, 0.052, 0.088, 0.068, 0.055
# Face feature azimuths (degrees from the facing direction), lateral reach and vertical offset
# (both in head radii), and the cos(azimuth) above which the feature faces the camera.
_FACE = {
    "nose": (0.0, 1.1, 0.15, -0.15),
    "left_eye": (35.0, 0.75, -0.15, 0.1),
    "right_eye": (-35.0, 0.75, -0.15, 0.1),
    "left_ear": (90.0, 1.0, 0.0, -0.3),
    "right_ear": (-90.0, 1.0, 0.0, -0.3),
}


def _skeleton_3d(pose: Pose) -> Dict[str, np.ndarray]:
    """Joint positions in the body frame (L, F, D), pelvis at the origin, height units."""
    L, F = np.array([1.0, 0.0, 0.0]), np.array([0.0, 1.0, 0.0])
    lf, ls = math.radians(pose.lean_forward), math.radians(pose.lean_side)
    up = _unit(np.array([math.sin(ls), math.sin(lf), -math.cos(lf) * math.cos(ls)]))
    pts = {"pelvis": np.zeros(3)}
    neck = up * _TORSO
    pts["neck"] = neck
    pts["head"] = neck + _unit(up + np.array([0.0, 0.0, -1.0])) * _NECK
    pts["chest_f"], pts["chest_b"] = neck + F * _CHEST_DEPTH, neck - F * _CHEST_DEPTH
    pts["pelvis_f"], pts["pelvis_b"] = F * _PELVIS_DEPTH, -F * _PELVIS_DEPTH
    for i, (s, sign) in enumerate((("left", 1.0), ("right", -1.0))):
        abd, flex, elbow, twist = pose.arms[i]
        shoulder = neck + L * sign * _SHOULDER
        d_up = _limb_dir(sign, abd, flex)
        d_lo = _bend(d_up, F, elbow, twist * sign)
        pts[f"{s}_shoulder"] = shoulder
        pts[f"{s}_chest"] = neck + L * sign * _SHOULDER * 0.9
        pts[f"{s}_elbow"] = shoulder + d_up * _UPPER_ARM
        pts[f"{s}_wrist"] = pts[f"{s}_elbow"] + d_lo * _FOREARM
        pts[f"{s}_hand"] = pts[f"{s}_wrist"] + d_lo * _HAND
        pts[f"{s}_band"] = pts[f"{s}_wrist"] - d_lo * (0.3 * _FOREARM)
        abd, flex, knee = pose.legs[i]
        hip = L * sign * _HIP
        d_th = _limb_dir(sign, abd, flex)
        d_sh = _bend(d_th, -F, knee)
        pts[f"{s}_hip"] = hip
        pts[f"{s}_waist"] = L * sign * (_HIP + 0.01)
        pts[f"{s}_knee"] = hip + d_th * _THIGH
        pts[f"{s}_ankle"] = pts[f"{s}_knee"] + d_sh * _SHIN
        pts[f"{s}_toe"] = pts[f"{s}_ankle"] + _bend(d_sh, F, 90.0) * _FOOT
    return pts


def build_figure(
    pose: Pose,
    appearance: Appearance,
    height_px: float,
    pelvis_xy: Tuple[float, float] = (0.0, 0.0),
    depth: float = 0.0,
) -> Figure:
    """Projects and lays out the primitives of one figure.

    Args:
        pose: joint angles.
        appearance: colours and build.
        height_px: standing body height in pixels.
        pelvis_xy: continuous image position of the pelvis (midpoint of the hips).
        depth: scene depth (larger is farther).

    Returns:
        a Figure.
    """
    pts3 = _skeleton_3d(pose)
    names = list(pts3)
    P = np.stack([pts3[n] for n in names])
    b = math.radians(pose.yaw)
    cb, sb = math.cos(b), math.sin(b)
    # Orthographic projection after turning the body by its yaw; z points towards the camera.
    x = P[:, 0] * cb + P[:, 1] * sb
    z = -P[:, 0] * sb + P[:, 1] * cb
    y = P[:, 2]
    t = math.radians(pose.tilt)
    ct, st = math.cos(t), math.sin(t)
    xy = np.stack([x * ct - y * st, x * st + y * ct], axis=1) * height_px + np.asarray(pelvis_xy)
    z = z * height_px
    p2 = {n: xy[i] for i, n in enumerate(names)}
    pz = {n: float(z[i]) for i, n in enumerate(names)}

    H = height_px
    bld = appearance.build
    limb_color = dict(appearance.limbs)
    parts: List[Part] = []

    def capsule(pid, a, c, thick, color, bias) -> Part:
        part = Part(
            pid,
            "capsule",
            np.stack([p2[a], p2[c]]),
            max(1.0, thick),
            color,
            (pz[a] + pz[c]) / 2.0 + bias * H,
        )
        parts.append(part)
        return part

    # Small z biases break ties between parts at equal depth: legs behind the torso, the head
    # in front of it, arms in front of both (arms hanging at the sides of a frontal figure).
    torso_pts = np.stack(
        [
            p2[n]
            for n in (
                "left_chest",
                "right_chest",
                "right_waist",
                "left_waist",
                "chest_f",
                "chest_b",
                "pelvis_f",
                "pelvis_b",
            )
        ]
    )
    hull = cv2.convexHull(torso_pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)
    parts.append(Part(TORSO, "polygon", hull, 0.0, appearance.shirt, 0.0))
    capsule(TORSO, "neck", "head", _T_NECK * bld * H, appearance.skin, 0.001)
    eps = 1e-4 * H
    for s, ua, fa, th, sh in (
        ("left", L_UPPER_ARM, L_FOREARM, L_THIGH, L_SHIN),
        ("right", R_UPPER_ARM, R_FOREARM, R_THIGH, R_SHIN),
    ):
        capsule(ua, f"{s}_shoulder", f"{s}_elbow", _T_UPPER_ARM * bld * H, limb_color[ua], 0.01)
        forearm = capsule(
            fa, f"{s}_elbow", f"{s}_wrist", _T_FOREARM * bld * H, limb_color[fa], 0.011
        )
        capsule(fa, f"{s}_wrist", f"{s}_hand", _T_FOREARM * bld * H * 1.1, appearance.skin, 0.012)
        thigh = capsule(th, f"{s}_hip", f"{s}_knee", _T_THIGH * bld * H, limb_color[th], -0.01)
        shin = capsule(sh, f"{s}_knee", f"{s}_ankle", _T_SHIN * bld * H, limb_color[sh], -0.011)
        capsule(sh, f"{s}_ankle", f"{s}_toe", _T_SHIN * bld * H * 0.9, appearance.shoes, -0.012)
        if not appearance.marks:
            continue
        # The marks are drawn just over the limb they sit on.
        if (s == "left") == appearance.band_on_left:
            band = capsule(
                fa, f"{s}_band", f"{s}_wrist", _T_FOREARM * bld * H * 1.3, appearance.band, 0.0
            )
            band.z = forearm.z + eps
        else:
            parts.append(
                Part(
                    th,
                    "circle",
                    p2[f"{s}_knee"][None],
                    _T_SHIN * bld * H * 0.55,
                    appearance.patch,
                    max(thigh.z, shin.z) + eps,
                )
            )

    # Head: a disc, then hair and the features that face the camera.
    r = _HEAD_R * appearance.head_scale * H
    hc, hz = p2["head"], pz["head"] + 0.002 * H
    phi = pose.yaw + pose.head_turn
    sphi, cphi = math.sin(math.radians(phi)), math.cos(math.radians(phi))
    rot = np.array([[ct, -st], [st, ct]])

    def head_point(dx: float, dy: float) -> np.ndarray:
        return hc + rot @ np.array([dx * r, dy * r])

    back_hair = Part(
        HEAD,
        "circle",
        head_point(-0.35 * sphi, -0.2)[None],
        0.85 * r,
        appearance.hair,
        hz + 1e-4 * H,
    )
    if cphi > 0.5:  # mostly frontal: hair is a crescent on top, drawn under the face disc
        parts.append(
            Part(
                HEAD,
                "circle",
                head_point(0.0, -0.28)[None],
                0.9 * r,
                appearance.hair,
                hz - 1e-4 * H,
            )
        )
    parts.append(Part(HEAD, "circle", hc[None], r, appearance.skin, hz))
    if cphi <= 0.5:
        parts.append(back_hair)

    keypoints = np.zeros((NUM_KEYPOINTS, 2), dtype=np.float64)
    self_visible = np.ones(NUM_KEYPOINTS, dtype=bool)
    for name, (az, reach, dy, thresh) in _FACE.items():
        a = math.radians(phi + az)
        k = _KP_INDEX[name]
        keypoints[k] = head_point(reach * math.sin(a), dy)
        self_visible[k] = math.cos(a) > thresh
    dark = tuple(int(c * 0.55) for c in appearance.skin)
    fz = hz + 2e-4 * H
    for side in ("left", "right"):
        k = _KP_INDEX[f"{side}_ear"]
        if self_visible[k]:
            parts.append(Part(HEAD, "circle", keypoints[k][None], 0.28 * r, appearance.skin, fz))
    for side in ("left", "right"):
        k = _KP_INDEX[f"{side}_eye"]
        if self_visible[k]:
            parts.append(
                Part(
                    HEAD,
                    "circle",
                    keypoints[k][None],
                    max(0.5, 0.15 * r),
                    (25, 20, 20),
                    fz + 1e-4 * H,
                )
            )
    k = _KP_INDEX["nose"]
    if self_visible[k]:
        root = head_point(0.55 * sphi, 0.1)
        parts.append(
            Part(
                HEAD,
                "capsule",
                np.stack([root, keypoints[k]]),
                max(1.0, 0.3 * r),
                dark,
                fz + 1e-4 * H,
            )
        )
    if cphi > 0.3:
        mouth = np.stack(
            [head_point(0.6 * math.sin(math.radians(phi + d)), 0.5) for d in (-25, 25)]
        )
        parts.append(Part(HEAD, "capsule", mouth, max(1.0, 0.12 * r), (40, 40, 140), fz + 1e-4 * H))

    allowed = _ALLOWED_PARTS.copy()
    for name in COCO_PERSON_KEYPOINT_NAMES:
        if name in p2:
            keypoints[_KP_INDEX[name]] = p2[name]
    for name in ("left_shoulder", "right_shoulder", "left_hip", "right_hip"):
        if pz[name] < -0.04 * H:  # far side of a turned body (|sin(yaw)| > ~0.4)
            allowed[_KP_INDEX[name], TORSO] = False
    return Figure(keypoints, self_visible, parts, depth, allowed)


def _sample_height(rng: np.random.Generator, cfg: RenderConfig) -> float:
    w = np.asarray([m[0] for m in cfg.person_height_mix], dtype=np.float64)
    lo, hi = cfg.person_height_mix[int(rng.choice(len(w), p=w / w.sum()))][1:]
    return float(math.exp(rng.uniform(math.log(lo), math.log(hi))))


def _sample_center(rng: np.random.Generator, extent: float, size: int, trunc: float) -> float:
    lo = min(extent / 2.0, size / 2.0) - trunc * extent
    hi = max(size - extent / 2.0, size / 2.0) + trunc * extent
    return float(rng.uniform(lo, hi))


def sample_figure(
    rng: np.random.Generator,
    cfg: RenderConfig,
    width: int,
    height: int,
    shirt: Optional[Color] = None,
    near: Optional[Figure] = None,
) -> Figure:
    """Samples a pose, an appearance, a size and a place for one figure.

    Args:
        rng: random generator.
        cfg: the generator's knobs.
        width, height: image size.
        shirt: fixed shirt colour (team colours) or None.
        near: if given, the figure is placed next to this one (to overlap it).

    Returns:
        a Figure; bigger figures tend to be closer (smaller depth).
    """
    pose = sample_pose(rng, cfg)
    appearance = sample_appearance(rng, cfg, shirt)
    body_h = _sample_height(rng, cfg)
    depth = -body_h * rng.uniform(0.8, 1.25)
    fig = build_figure(pose, appearance, body_h, (0.0, 0.0), depth)
    x0, y0, x1, y1 = fig.bounds()
    bw, bh = x1 - x0, y1 - y0
    cx = _sample_center(rng, bw, width, cfg.truncation)
    cy = _sample_center(rng, bh, height, cfg.truncation)
    if near is not None:
        nx0, ny0, nx1, ny1 = near.bounds()
        cx = (nx0 + nx1) / 2.0 + rng.normal(0.0, 0.3 * (bw + nx1 - nx0) / 2.0)
        cy = (ny0 + ny1) / 2.0 + rng.normal(0.0, 0.15 * (bh + ny1 - ny0) / 2.0)
    return fig.translated(cx - (x0 + x1) / 2.0, cy - (y0 + y1) / 2.0)
