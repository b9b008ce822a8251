"""Shared test settings: CPU only, quiet third-party deprecation noise, and test data in tmp."""
import warnings

import pytest


def pytest_configure(config):
    # Deprecations raised inside torch / detectron2 0.6 / setuptools, not by this project.
    for pattern in (
        r"ignore:.*torch\.jit\.script.*is deprecated:FutureWarning",
        r"ignore:LINEAR is deprecated:DeprecationWarning",
        r"ignore:pkg_resources is deprecated:UserWarning",
        r"ignore:torch\.meshgrid:UserWarning",
    ):
        config.addinivalue_line("filterwarnings", pattern)


@pytest.fixture(autouse=True)
def _datasets_in_tmp(tmp_path_factory, monkeypatch):
    """Datasets that tests generate go to a per-session tmp dir, never into the checkout."""
    root = tmp_path_factory.getbasetemp() / "detectron2_datasets"
    root.mkdir(exist_ok=True)
    monkeypatch.setenv("DETECTRON2_DATASETS", str(root))
    warnings.simplefilter("default")
