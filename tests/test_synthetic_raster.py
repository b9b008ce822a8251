"""The numpy resampling and blur of the synthetic images: the operations OpenCV names, and the
exact values OpenCV 4.x gave, whatever OpenCV is installed."""

import dataclasses
import hashlib
import os
import re

import cv2
import numpy as np
import pytest

from dd_detectron.data.synthetic import splits as syn
from dd_detectron.data.synthetic.raster import (
    correlate_reflect,
    motion_blur_kernel,
    resize_bicubic,
)


def test_bicubic_keeps_constants_and_interpolates_the_samples():
    constant = np.full((3, 4, 3), 17.25, np.float32)
    assert np.allclose(resize_bicubic(constant, 50, 30), 17.25, atol=1e-5)
    grid = np.random.default_rng(2).uniform(0, 9, (4, 6, 3)).astype(np.float32)
    assert np.array_equal(resize_bicubic(grid, 6, 4), grid)  # same size: the samples
    # Three times larger: every third pixel centre falls on a sample, which it keeps.
    out = resize_bicubic(grid, 18, 12)
    assert np.allclose(out[1::3, 1::3], grid, atol=1e-6)
    assert not np.allclose(out[0::3, 0::3], grid, atol=1e-2)


def test_bicubic_is_opencvs_inter_cubic():
    grid = np.random.default_rng(0).uniform(-40, 40, (4, 5, 3)).astype(np.float32)
    reference = cv2.resize(grid, (123, 77), interpolation=cv2.INTER_CUBIC)
    assert resize_bicubic(grid, 123, 77).shape == (77, 123, 3)
    assert np.abs(resize_bicubic(grid, 123, 77) - reference).max() < 1e-3


def test_motion_blur_kernel_is_a_rotated_normalised_line():
    flat = motion_blur_kernel(5, 0.0)
    expected = np.zeros((5, 5), np.float32)
    expected[2, :] = 0.2
    assert np.allclose(flat, expected, atol=1e-7)
    tilted = motion_blur_kernel(7, 15.0)
    assert tilted.dtype == np.float32 and abs(float(tilted.sum()) - 1.0) < 1e-6
    # Counter-clockwise in image coordinates (y down): the right end goes up.
    assert tilted[:3, 4:].sum() > tilted[4:, 4:].sum()
    assert np.allclose(motion_blur_kernel(7, -15.0), np.flipud(tilted), atol=1e-6)


# sha256 of the float32 kernels, for length 3..7 at three angles each, as OpenCV 4.11's
# warpAffine (plus the float32 normalisation the generator did) gave them.
OPENCV4_KERNELS_SHA256 = "fe565b4412812ab3467764e100bc8551890f00590223d00d8e1ee5936e8b8950"


def _kernels_digest():
    h = hashlib.sha256()
    for length in range(3, 8):
        for angle in (-17.3, 4.0, 19.9):
            h.update(motion_blur_kernel(length, angle).tobytes())
    return h.hexdigest()


def test_motion_blur_kernels_are_those_opencv_4_drew():
    assert _kernels_digest() == OPENCV4_KERNELS_SHA256


def _correlate_reference(image, kernel):
    kh, kw = kernel.shape
    padded = np.pad(
        image.astype(np.float64),
        [(kh // 2, kh - 1 - kh // 2), (kw // 2, kw - 1 - kw // 2), (0, 0)],
        mode="symmetric",
    )
    out = np.zeros(image.shape, np.float64)
    for y in range(image.shape[0]):
        for x in range(image.shape[1]):
            window = padded[y : y + kh, x : x + kw]
            out[y, x] = np.tensordot(kernel.astype(np.float64), window, axes=([0, 1], [0, 1]))
    return out


@pytest.mark.parametrize("length, angle", [(3, 10.0), (6, -12.5)])
def test_correlation_mirrors_the_border_as_filter2d(length, angle):
    image = np.random.default_rng(1).uniform(0, 255, (9, 11, 3)).astype(np.float32)
    kernel = motion_blur_kernel(length, angle)
    out = correlate_reflect(image, kernel)
    assert out.dtype == np.float32
    assert np.abs(out - _correlate_reference(image, kernel)).max() < 1e-3
    reference = cv2.filter2D(image, -1, kernel, borderType=cv2.BORDER_REFLECT)
    assert np.abs(out - reference).max() < 1e-3


@pytest.mark.parametrize("version", ["4.13.0", "5.1.0", "4.7.0"])
def test_an_opencv_that_draws_differently_is_refused_by_name(version, tmp_path):
    spec = dataclasses.replace(syn.DEMO_SYNTHETIC_SPLITS[0], num_images=1)
    with pytest.raises(RuntimeError, match=f"OpenCV {re.escape(version)} draws"):
        syn.check_drawing_library(version)
    syn.check_drawing_library("4.12.0")  # the newest release that draws alike
    syn.generate_split(spec, str(tmp_path))  # the installed OpenCV is one of them
    assert os.listdir(tmp_path)
