"""The measuring helpers of the benchmarks (dd_detectron/utils/benchmark.py)."""

import numpy as np

from dd_detectron.utils.benchmark import PeakMemory


def test_peak_memory_sees_growth_inside_the_block_only():
    memory = PeakMemory("cpu")
    with memory:
        block = np.ones(64 * 2**20, dtype=np.uint8)  # 64 MiB, every page written
    inside = memory.peak_mib
    assert 60.0 <= inside < 200.0
    del block
    with memory:  # less growth the second time: the larger peak is kept
        np.ones(2**20, dtype=np.uint8)
    assert memory.peak_mib == inside
