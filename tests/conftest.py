"""Shared test settings: CPU only, quiet third-party deprecation noise, and test data in tmp;
the ``load_tool`` fixture for the tests of a script."""

import importlib.util
import os
import shutil
import sys
import tempfile
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
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


@pytest.fixture(scope="session")
def load_tool():
    """A function ``load_tool(name, folder="tools")`` that imports ``<folder>/<name>.py`` of the
    repository by its path (scripts are not a package) and returns the module; each script is
    imported once per session. Tests of library code import the package instead."""
    modules = {}

    def load(name: str, folder: str = "tools"):
        key = f"dd_{folder}_{name}"
        if key not in modules:
            spec = importlib.util.spec_from_file_location(key, REPO / folder / f"{name}.py")
            module = importlib.util.module_from_spec(spec)
            sys.modules[key] = module  # dataclasses and pickle look their module up here
            spec.loader.exec_module(module)
            modules[key] = module
        return modules[key]

    return load


@pytest.fixture
def one_thread():
    """One torch thread for the test: bit-identical detections across runs and processes need
    the same thread count. Modules opt in with ``pytestmark = pytest.mark.usefixtures(...)``."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def clean_registry():
    """A list to append the dataset names a test registers; they are removed afterwards, so
    that reruns in one process work."""
    from detectron2.data import DatasetCatalog, MetadataCatalog

    names = []
    yield names
    for name in names:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)
