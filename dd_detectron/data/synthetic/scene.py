"""One synthetic image: background, figures and distractors drawn back to front, annotated.

Everything is drawn back to front together with distractor shapes into the image and into an
id map (which figure part, or which distractor, owns every pixel). Visibility, areas and instance
masks are read from that id map, so they are exact for what was drawn: a person's mask holds the
pixels where that person is the last thing drawn, without what later people or distractors hide.

Coordinates as in figure.py: continuous image coordinates (pixel centres at i + 0.5) inside,
pixel indices (continuous - 0.5) for OpenCV drawing and in the COCO keypoints written.
"""

import math
from dataclasses import dataclass
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from pycocotools import mask as mask_util

from .figure import (
    _ALLOWED_PARTS,
    _PARTS_PER_FIGURE,
    _SKIN_TONES,
    NUM_KEYPOINTS,
    Color,
    Figure,
    Part,
    _family_color,
    _hsv,
    _random_color,
    _weighted_choice,
    sample_figure,
)
from .raster import correlate_reflect, motion_blur_kernel, resize_bicubic
from .render_config import BACKGROUND_STYLES, DISTRACTOR_KINDS, RenderConfig

__all__ = [
    "Distractor",
    "sample_distractor",
    "make_background",
    "render_scene",
    "render_image",
    "encode_mask",
]

# Id map value of every distractor pixel (figures use 1 + slot * _PARTS_PER_FIGURE + part id,
# 0 is background).
_DISTRACTOR_ID = 0xFFFF


@dataclass
class Distractor:
    """A non-person shape: primitives and a scene depth (larger is farther)."""

    parts: List[Part]
    depth: float


def sample_distractor(
    rng: np.random.Generator,
    cfg: RenderConfig,
    width: int,
    height: int,
    figures: Sequence[Figure] = (),
) -> Distractor:
    """Samples one non-person shape (blob, stick, limb-like chain or disc).

    Args:
        rng: random generator.
        cfg: supplies distractor_kinds and the occluder probabilities.
        width, height: image size.
        figures: figures already placed (a distractor may be centred on one of their joints).

    Returns:
        a Distractor.
    """
    kind = _weighted_choice(rng, cfg.distractor_kinds)
    s = float(min(width, height))
    center = np.array([rng.uniform(0, width), rng.uniform(0, height)])
    if figures and rng.random() < cfg.occluder_on_person_prob:
        fig = figures[int(rng.integers(len(figures)))]
        center = fig.keypoints[int(rng.integers(NUM_KEYPOINTS))] + rng.normal(0.0, 0.03 * s, 2)
    if rng.random() < cfg.occluder_front_prob:
        depth = -1e6  # in front of every figure
    else:
        far = min([f.depth for f in figures], default=-100.0)
        depth = float(rng.uniform(1.3 * far, 0.0))
    parts: List[Part] = []
    if kind == "blob":
        n = int(rng.integers(5, 10))
        ang = np.sort(rng.uniform(0, 2 * math.pi, n))
        rx, ry = rng.uniform(0.03, 0.15, 2) * s
        radii = rng.uniform(0.7, 1.0, (n, 1))
        pts = center + np.stack([rx * np.cos(ang), ry * np.sin(ang)], 1) * radii
        hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2).astype(np.float64)
        parts.append(Part(0, "polygon", hull, 0.0, _random_color(rng), 0.0))
    elif kind == "stick":
        a = rng.uniform(0, math.pi)
        half = rng.uniform(0.05, 0.25) * s * np.array([math.cos(a), math.sin(a)])
        parts.append(
            Part(
                0,
                "capsule",
                np.stack([center - half, center + half]),
                max(1.0, rng.uniform(0.005, 0.04) * s),
                _random_color(rng),
                0.0,
            )
        )
    elif kind == "limb":
        thick = max(1.0, rng.uniform(0.02, 0.06) * s)
        hue = rng.uniform(-20, 45) if rng.random() < 0.5 else rng.uniform(175, 245)
        a = rng.uniform(0, 2 * math.pi)
        p = center
        for j in range(int(rng.integers(2, 4))):
            length = rng.uniform(0.07, 0.2) * s
            q = p + length * np.array([math.cos(a), math.sin(a)])
            color = _family_color(rng, hue) if rng.random() < 0.7 else _random_color(rng)
            parts.append(Part(0, "capsule", np.stack([p, q]), thick, color, float(j)))
            p = q
            a += rng.uniform(20, 120) * math.pi / 180.0 * (1 if rng.random() < 0.5 else -1)
        if rng.random() < 0.5:
            tone = _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))]
            parts.append(Part(0, "circle", p[None], thick * 0.6, tone, 10.0))
    elif kind == "disc":  # head-like
        if rng.random() < 0.6:
            tone = _SKIN_TONES[int(rng.integers(len(_SKIN_TONES)))]
        else:
            tone = _random_color(rng)
        parts.append(Part(0, "circle", center[None], rng.uniform(0.015, 0.06) * s, tone, 0.0))
    else:
        raise ValueError(f"Unknown distractor kind {kind!r}; expected one of {DISTRACTOR_KINDS}")
    return Distractor(parts, depth)


# ---------------------------------------------------------------------------------------------
# Backgrounds
# ---------------------------------------------------------------------------------------------


def _low_freq_noise(rng: np.random.Generator, width: int, height: int, amp: float) -> np.ndarray:
    gh, gw = int(rng.integers(2, 7)), int(rng.integers(2, 7))
    grid = rng.uniform(-amp, amp, (gh, gw, 3)).astype(np.float32)
    return resize_bicubic(grid, width, height)


def _gradient(
    rng: np.random.Generator, width: int, height: int, c0: Color, c1: Color
) -> np.ndarray:
    a = rng.uniform(0, 2 * math.pi)
    xs = np.arange(width, dtype=np.float32)[None, :] / max(width - 1, 1)
    ys = np.arange(height, dtype=np.float32)[:, None] / max(height - 1, 1)
    t = xs * math.cos(a) + ys * math.sin(a)
    t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
    c0a, c1a = np.asarray(c0, np.float32), np.asarray(c1, np.float32)
    return c0a + t[..., None] * (c1a - c0a)


def _random_lines(rng: np.random.Generator, img: np.ndarray, n: int, max_thick: int) -> None:
    h, w = img.shape[:2]
    for _ in range(n):
        p = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        q = (int(rng.integers(-w // 4, w + w // 4)), int(rng.integers(-h // 4, h + h // 4)))
        cv2.line(img, p, q, _random_color(rng), int(rng.integers(1, max_thick + 1)), cv2.LINE_AA)


def make_background(rng: np.random.Generator, style: str, width: int, height: int) -> np.ndarray:
    """Draws a background.

    Args:
        rng: random generator.
        style: one of BACKGROUND_STYLES.
        width, height: image size.

    Returns:
        (height, width, 3) uint8 BGR image.
    """
    if style == "plain":
        return np.full((height, width, 3), _random_color(rng), dtype=np.uint8)
    if style == "clutter":
        img = _gradient(rng, width, height, _random_color(rng), _random_color(rng))
        img += _low_freq_noise(rng, width, height, rng.uniform(15, 60))
        img = np.clip(img, 0, 255).astype(np.uint8)
        if rng.random() < 0.6:  # a patch of stripes or checks
            x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
            x1, y1 = x0 + int(rng.integers(20, width)), y0 + int(rng.integers(20, height))
            period = int(rng.integers(3, 12))
            yy, xx = np.mgrid[y0 : min(y1, height), x0 : min(x1, width)]
            if rng.random() < 0.5:
                mask = ((xx + yy) // period) % 2 == 0
            else:
                mask = ((xx // period) + (yy // period)) % 2 == 0
            img[y0 : min(y1, height), x0 : min(x1, width)][mask] = _random_color(rng)
        for _ in range(int(rng.integers(0, 5))):  # faint rectangles and ellipses
            c = tuple(int(v) for v in rng.integers(0, 256, 3))
            p = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            ax = (int(rng.integers(5, width // 3)), int(rng.integers(5, height // 3)))
            if rng.random() < 0.5:
                cv2.rectangle(img, p, (p[0] + ax[0], p[1] + ax[1]), c, -1)
            else:
                cv2.ellipse(img, p, ax, float(rng.uniform(0, 180)), 0, 360, c, -1, cv2.LINE_AA)
        _random_lines(rng, img, int(rng.integers(3, 16)), 3)
        return img
    if style == "field":
        ground = [
            _hsv(rng.uniform(85, 140), rng.uniform(0.4, 0.8), rng.uniform(0.35, 0.7)),  # grass
            _hsv(rng.uniform(15, 30), rng.uniform(0.5, 0.8), rng.uniform(0.5, 0.8)),  # clay
            _hsv(rng.uniform(200, 230), rng.uniform(0.4, 0.7), rng.uniform(0.4, 0.7)),  # court
            _hsv(rng.uniform(28, 40), rng.uniform(0.35, 0.6), rng.uniform(0.6, 0.9)),  # wood
        ][int(rng.integers(4))]
        img = np.empty((height, width, 3), np.float32)
        img[:] = ground
        if rng.random() < 0.5:  # mowing stripes
            period = int(rng.integers(12, 40))
            band = ((np.arange(width) // period) % 2).astype(np.float32) * rng.uniform(8, 20)
            img += band[None, :, None]
        img += _low_freq_noise(rng, width, height, rng.uniform(5, 20))
        img = np.clip(img, 0, 255).astype(np.uint8)
        for _ in range(int(rng.integers(2, 6))):  # court lines, near horizontal or vertical
            if rng.random() < 0.5:
                y = int(rng.integers(0, height))
                p, q = (0, y), (width - 1, y + int(rng.integers(-height // 4, height // 4)))
            else:
                x = int(rng.integers(0, width))
                p, q = (x, 0), (x + int(rng.integers(-width // 3, width // 3)), height - 1)
            cv2.line(img, p, q, (235, 240, 240), int(rng.integers(1, 4)), cv2.LINE_AA)
        if rng.random() < 0.4:
            c = (int(rng.integers(0, width)), int(rng.integers(0, height)))
            cv2.circle(
                img,
                c,
                int(rng.integers(10, max(width, height) // 2)),
                (235, 240, 240),
                2,
                cv2.LINE_AA,
            )
        if rng.random() < 0.7:  # crowd in the stands: coarse random colour blocks on top
            band_h = int(rng.uniform(0.1, 0.3) * height)
            cell = int(rng.integers(2, 5))
            crowd = rng.integers(0, 256, (max(1, band_h // cell), max(1, width // cell), 3))
            crowd = cv2.resize(
                crowd.astype(np.uint8), (width, band_h), interpolation=cv2.INTER_NEAREST
            )
            if band_h > 0:
                img[:band_h] = (crowd.astype(np.float32) * 0.7).astype(np.uint8)
        return img
    raise ValueError(f"Unknown background style {style!r}; expected one of {BACKGROUND_STYLES}")


# ---------------------------------------------------------------------------------------------
# Rendering and annotation
# ---------------------------------------------------------------------------------------------

_SHIFT = 4  # OpenCV sub-pixel bits
_ONE = 1 << _SHIFT


def _fixed(points: np.ndarray) -> np.ndarray:
    # continuous -> OpenCV pixel-index coordinates (-0.5), in 1/16 px fixed point
    return np.round((points - 0.5) * _ONE).astype(np.int32)


def _draw_part(img: np.ndarray, ids: np.ndarray, part: Part, id_value: int) -> None:
    # Anti-aliased in the image, hard-edged in the id map (ids must not blend).
    if part.kind == "capsule":
        p = _fixed(part.points)
        a, b = (int(p[0, 0]), int(p[0, 1])), (int(p[1, 0]), int(p[1, 1]))
        t = max(1, int(round(part.size)))
        cv2.line(img, a, b, part.color, t, cv2.LINE_AA, _SHIFT)
        cv2.line(ids, a, b, id_value, t, cv2.LINE_8, _SHIFT)
    elif part.kind == "circle":
        p = _fixed(part.points)[0]
        c = (int(p[0]), int(p[1]))
        rad = max(int(round(part.size * _ONE)), _ONE // 2)
        cv2.circle(img, c, rad, part.color, -1, cv2.LINE_AA, _SHIFT)
        cv2.circle(ids, c, rad, id_value, -1, cv2.LINE_8, _SHIFT)
    elif part.kind == "polygon":
        p = _fixed(part.points)
        cv2.fillConvexPoly(img, p, part.color, cv2.LINE_AA, _SHIFT)
        cv2.fillConvexPoly(ids, p, id_value, cv2.LINE_8, _SHIFT)
    else:
        raise ValueError(f"Unknown part kind {part.kind!r}")


def render_scene(
    background: np.ndarray,
    figures: Sequence[Figure],
    distractors: Sequence[Distractor] = (),
    min_visible_area: int = 16,
    min_keypoint_area: int = 0,
) -> Tuple[np.ndarray, List[dict]]:
    """Draws figures and distractors back to front and annotates the figures.

    Args:
        background: (H, W, 3) uint8 image; not modified.
        figures: the people.
        distractors: non-person shapes.
        min_visible_area: figures with fewer visible pixels are drawn but not annotated.
        min_keypoint_area: figures with fewer visible pixels are annotated without keypoints.

    Returns:
        (image, annotations). One annotation dict per kept figure, in figure order, with
        "figure_index", "keypoints" (flat COCO list of 51: pixel-index x, y rounded to 2
        decimals, and v), "num_keypoints", "bbox" (XYWH, continuous coordinates), "area"
        (visible silhouette pixels), "segmentation" (the visible silhouette as COCO compressed
        RLE, ``{"size": [H, W], "counts": str}``; its area is "area").
    """
    if len(figures) * _PARTS_PER_FIGURE + 1 >= _DISTRACTOR_ID:
        raise ValueError(f"Too many figures for one image: {len(figures)}")
    img = background.copy()
    H, W = img.shape[:2]
    ids = np.zeros((H, W), dtype=np.uint16)
    items = [(f.depth, 0, i) for i, f in enumerate(figures)]
    items += [(d.depth, 1, i) for i, d in enumerate(distractors)]
    # Farthest first; ties keep figures before distractors and the given order.
    for _, is_distractor, i in sorted(items, key=lambda t: (-t[0], t[1], t[2])):
        if is_distractor:
            for part in sorted(distractors[i].parts, key=lambda p: p.z):
                _draw_part(img, ids, part, _DISTRACTOR_ID)
        else:
            base = 1 + i * _PARTS_PER_FIGURE
            for part in sorted(figures[i].parts, key=lambda p: p.z):
                _draw_part(img, ids, part, base + part.part_id)
    return img, _annotate(ids, figures, min_visible_area, min_keypoint_area)


def _annotate(
    ids: np.ndarray, figures: Sequence[Figure], min_visible_area: int, min_keypoint_area: int = 0
) -> List[dict]:
    H, W = ids.shape
    is_fig = (ids > 0) & (ids != _DISTRACTOR_ID)
    slot = np.where(is_fig, (ids.astype(np.int32) - 1) // _PARTS_PER_FIGURE, -1)
    areas = np.bincount(slot[is_fig].ravel(), minlength=len(figures))
    annotations = []
    for i, fig in enumerate(figures):
        allowed = _ALLOWED_PARTS if fig.allowed_parts is None else fig.allowed_parts
        area = int(areas[i])
        if area < max(1, min_visible_area):
            continue
        visible = slot == i
        ys, xs = np.nonzero(visible)
        x0, y0, x1, y1 = float(xs.min()), float(ys.min()), float(xs.max() + 1), float(ys.max() + 1)
        kps: List[float] = []
        n_vis = 0
        for k in range(NUM_KEYPOINTS):
            if area < min_keypoint_area:
                kps += [0, 0, 0]  # a small person: box only (see RenderConfig.min_keypoint_area)
                continue
            # COCO keypoints are pixel indices: detectron2 adds 0.5 when loading, so write
            # continuous - 0.5 (rounded so the JSON is stable).
            jx = round(float(fig.keypoints[k, 0]) - 0.5, 2)
            jy = round(float(fig.keypoints[k, 1]) - 0.5, 2)
            if not (0.0 <= jx <= W - 1 and 0.0 <= jy <= H - 1):
                kps += [0, 0, 0]  # outside the image: COCO writes (0, 0, 0)
                continue
            px, py = int(math.floor(jx + 0.5)), int(math.floor(jy + 0.5))
            v_id = int(ids[py, px])
            seen = (
                0 < v_id != _DISTRACTOR_ID
                and (v_id - 1) // _PARTS_PER_FIGURE == i
                and bool(allowed[k, (v_id - 1) % _PARTS_PER_FIGURE])
                and bool(fig.self_visible[k])
            )
            # v = 1: inside the image but something (another figure, a distractor, this
            # figure's own torso/arm/head) is drawn over it.
            v = 2 if seen else 1
            kps += [jx, jy, v]
            n_vis += 1
            # The keypoint's pixel [jx, jx + 1] joins the box, so it holds both the JSON value
            # and the continuous one (jx + 0.5).
            x0, y0 = min(x0, jx), min(y0, jy)
            x1, y1 = max(x1, jx + 1.0), max(y1, jy + 1.0)
        x0, y0, x1, y1 = max(x0, 0.0), max(y0, 0.0), min(x1, float(W)), min(y1, float(H))
        annotations.append(
            {
                "figure_index": i,
                "keypoints": kps,
                "num_keypoints": n_vis,
                "bbox": [round(x0, 2), round(y0, 2), round(x1 - x0, 2), round(y1 - y0, 2)],
                "area": float(area),
                "segmentation": encode_mask(visible),
            }
        )
    return annotations


def encode_mask(mask: np.ndarray) -> dict:
    """A binary (H, W) mask as COCO compressed RLE with str counts (JSON-ready), as COCO's files
    and detectron2's ``INPUT.MASK_FORMAT: "bitmask"`` read it."""
    rle = mask_util.encode(np.asfortranarray(mask, dtype=np.uint8))
    return {"size": [int(v) for v in rle["size"]], "counts": rle["counts"].decode("ascii")}


def _photometric(rng: np.random.Generator, cfg: RenderConfig, img: np.ndarray) -> np.ndarray:
    out = img.astype(np.float32)
    lo, hi = cfg.motion_blur
    if hi > 0:
        n = int(rng.integers(lo, hi + 1))
        if n > 1:
            kernel = motion_blur_kernel(n, float(rng.uniform(-20, 20)))
            out = correlate_reflect(out, kernel)
    out = out * rng.uniform(*cfg.contrast_range) + rng.uniform(*cfg.brightness_range)
    if cfg.noise_sigma > 0:
        out += rng.standard_normal(out.shape, dtype=np.float32) * np.float32(cfg.noise_sigma)
    return np.clip(np.rint(out), 0, 255).astype(np.uint8)


def render_image(
    rng: np.random.Generator,
    cfg: RenderConfig,
    width: Optional[int] = None,
    height: Optional[int] = None,
) -> Tuple[np.ndarray, List[dict]]:
    """Samples and draws one whole image.

    Args:
        rng: random generator; the image depends only on its state and ``cfg``.
        cfg: the generator's knobs.
        width, height: image size; None samples it from ``cfg.width_range/height_range``.

    Returns:
        (image, annotations): (H, W, 3) uint8 BGR image and annotations as in ``render_scene``.
    """
    if width is None:
        width = int(rng.integers(cfg.width_range[0], cfg.width_range[1] + 1))
    if height is None:
        height = int(rng.integers(cfg.height_range[0], cfg.height_range[1] + 1))
    background = make_background(rng, cfg.background, width, height)
    w = np.asarray(cfg.num_people_weights, dtype=np.float64)
    n_people = int(rng.choice(len(w), p=w / w.sum()))
    teams = [_random_color(rng), _random_color(rng)] if cfg.team_colors else None
    figures: List[Figure] = []
    for _ in range(n_people):
        shirt = teams[int(rng.integers(2))] if teams else None
        near = figures[-1] if figures and rng.random() < cfg.cluster_prob else None
        figures.append(sample_figure(rng, cfg, width, height, shirt, near))
    lo, hi = cfg.num_distractors
    n_distractors = int(rng.integers(lo, hi + 1))
    distractors = [
        sample_distractor(rng, cfg, width, height, figures) for _ in range(n_distractors)
    ]
    img, annotations = render_scene(
        background, figures, distractors, cfg.min_visible_area, cfg.min_keypoint_area
    )
    return _photometric(rng, cfg, img), annotations
