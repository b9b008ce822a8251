"""Shared test settings: CPU only, quiet third-party deprecation noise, and test data in tmp."""
import os
import shutil
import tempfile

_DATASETS_ROOT = None


def pytest_configure(config):
    # Datasets that tests make go to a tmp dir, never into the checkout. Set before collection:
    # importing dd_detectron registers the builtin datasets under $DETECTRON2_DATASETS, and the
    # tools that tests start as child processes read it too.
    global _DATASETS_ROOT
    _DATASETS_ROOT = tempfile.mkdtemp(prefix="dd_test_datasets_")
    os.environ["DETECTRON2_DATASETS"] = _DATASETS_ROOT
    # Deprecations raised inside torch / detectron2 0.6 / setuptools, not by this project.
    for pattern in (
        r"ignore:.*torch\.jit\.script.*is deprecated:FutureWarning",
        r"ignore:LINEAR is deprecated:DeprecationWarning",
        r"ignore:pkg_resources is deprecated:UserWarning",
        r"ignore:torch\.meshgrid:UserWarning",
    ):
        config.addinivalue_line("filterwarnings", pattern)


def pytest_unconfigure(config):
    if _DATASETS_ROOT:
        shutil.rmtree(_DATASETS_ROOT, ignore_errors=True)
