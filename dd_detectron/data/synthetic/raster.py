"""Resampling and filtering for the synthetic images, in plain numpy.

OpenCV's float resampling and filtering change between releases and with the processor:
``cv2.resize`` with ``INTER_CUBIC`` goes through Intel IPP in 4.11 and not from 4.12 on, and
``cv2.warpAffine`` and ``cv2.filter2D`` changed in 5.x. Here every value comes from IEEE 754
element-wise arithmetic in a fixed order, which every numpy rounds alike. OpenCV still draws the
primitives (anti-aliased lines, circles, polygons), which setup.py pins to the releases that
draw them alike (see ``splits.DRAWING_OPENCV``).
"""

import math

import numpy as np

__all__ = ["resize_bicubic", "motion_blur_kernel", "correlate_reflect"]

# Keys' cubic convolution parameter, as OpenCV's and Detectron's INTER_CUBIC use.
_CUBIC_A = -0.75


def _cubic_weights(t: np.ndarray) -> np.ndarray:
    """The 4 weights of the samples at offsets -1, 0, 1, 2 for fractional positions ``t``."""
    a = _CUBIC_A
    d = np.stack([t + 1.0, t, 1.0 - t, 2.0 - t])  # distances to the 4 samples

    def near(x):  # |x| <= 1
        return ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0

    def far(x):  # 1 < |x| < 2
        return ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a

    return np.stack([far(d[0]), near(d[1]), near(d[2]), far(d[3])])


def _resample_axis(values: np.ndarray, size: int, axis: int) -> np.ndarray:
    n = values.shape[axis]
    # Pixel centres map onto pixel centres (x_src + 0.5 = (x_dst + 0.5) * n / size).
    pos = (np.arange(size, dtype=np.float64) + 0.5) * (n / size) - 0.5
    base = np.floor(pos)
    weights = _cubic_weights(pos - base)
    base = base.astype(np.int64)
    shape = [1] * values.ndim
    shape[axis] = size
    out = np.zeros(values.shape[:axis] + (size,) + values.shape[axis + 1 :], np.float64)
    for k in range(4):
        index = np.clip(base + (k - 1), 0, n - 1)  # the border sample repeats
        out = out + np.take(values, index, axis=axis) * weights[k].reshape(shape)
    return out


def resize_bicubic(image: np.ndarray, width: int, height: int) -> np.ndarray:
    """Bicubic resize of an (H, W[, C]) array to (height, width[, C]), in float32.

    Args:
        image: the array to resample (any real dtype).
        width, height: the output size.
    """
    values = np.asarray(image, np.float64)
    return _resample_axis(_resample_axis(values, width, 1), height, 0).astype(np.float32)


def motion_blur_kernel(length: int, angle_deg: float) -> np.ndarray:
    """A normalised float32 (length, length) kernel: a centred horizontal line of ``length``
    pixels rotated by ``angle_deg`` (counter-clockwise, image y down), bilinearly resampled.

    The arithmetic is that of ``cv2.warpAffine`` in OpenCV 4.x, which drew this kernel before, so
    the kernel and the data are those of that release: positions on a 1/32-pixel grid (the two
    terms of each coordinate rounded to 1/1024 of a pixel, their sum to 1/32), float32 weights.

    Args:
        length: side of the kernel, > 1.
        angle_deg: rotation in degrees.
    """
    f32 = np.float32
    centre = (length - 1) / 2.0
    line = np.zeros((length, length), f32)
    line[length // 2, :] = 1.0 / length
    cos_a, sin_a = math.cos(math.radians(angle_deg)), math.sin(math.radians(angle_deg))
    ys, xs = np.mgrid[0:length, 0:length].astype(np.float64)

    def ticks(along_x, along_y, offset):  # the position in 1/32 pixel
        return (np.rint(along_x * 1024.0) + np.rint((along_y + offset) * 1024.0) + 16.0) // 32

    # Each output pixel samples the line where the inverse rotation takes it.
    src_x = ticks(cos_a * xs, -sin_a * ys, centre - cos_a * centre + sin_a * centre)
    src_y = ticks(sin_a * xs, cos_a * ys, centre - sin_a * centre - cos_a * centre)
    src_x, src_y = src_x.astype(np.int64), src_y.astype(np.int64)
    x0, y0 = src_x >> 5, src_y >> 5
    fx, fy = (src_x & 31).astype(f32) / f32(32), (src_y & 31).astype(f32) / f32(32)
    taps = (
        (0, 0, (f32(1) - fy) * (f32(1) - fx)),
        (0, 1, (f32(1) - fy) * fx),
        (1, 0, fy * (f32(1) - fx)),
        (1, 1, fy * fx),
    )
    kernel = np.zeros((length, length), f32)
    for dy, dx, weight in taps:
        yy, xx = y0 + dy, x0 + dx
        inside = (yy >= 0) & (yy < length) & (xx >= 0) & (xx < length)  # zeros outside
        sample = np.where(inside, line[np.clip(yy, 0, length - 1), np.clip(xx, 0, length - 1)], 0)
        kernel = kernel + sample.astype(f32) * weight
    return kernel / f32(max(float(kernel.sum()), 1e-6))


def correlate_reflect(image: np.ndarray, kernel: np.ndarray) -> np.ndarray:
    """Correlate an (H, W[, C]) float32 image with a kernel, mirroring the border
    (``fedcba|abcdef|fedcba``, OpenCV's BORDER_REFLECT), as ``cv2.filter2D`` does in OpenCV 4.x:
    the non-zero taps in raster order, each a fused multiply-add into a float32 sum.

    Args:
        image: the image (float32).
        kernel: (kh, kw) float32 weights; the anchor is (kh // 2, kw // 2).
    """
    values = np.asarray(image, np.float32)
    kh, kw = kernel.shape
    ay, ax = kh // 2, kw // 2
    pad = [(ay, kh - 1 - ay), (ax, kw - 1 - ax)] + [(0, 0)] * (values.ndim - 2)
    padded = np.pad(values, pad, mode="symmetric")
    h, w = values.shape[:2]
    out = np.zeros(values.shape, np.float32)
    for i in range(kh):
        for j in range(kw):
            weight = float(np.float32(kernel[i, j]))
            if weight != 0.0:
                # A float32 product is exact in float64, so this rounds (almost always) as one
                # fused multiply-add would.
                window = padded[i : i + h, j : j + w].astype(np.float64)
                out = (weight * window + out).astype(np.float32)
    return out
