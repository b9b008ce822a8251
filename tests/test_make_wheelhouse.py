"""dev/make_wheelhouse.py: what the target already has, and which requirements go in."""

import pytest


@pytest.fixture(scope="module")
def wheelhouse(load_tool):
    return load_tool("make_wheelhouse", "dev")


def test_the_target_list_takes_pip_freeze_and_bare_names(tmp_path, wheelhouse):
    listing = tmp_path / "target.txt"
    listing.write_text(
        "# pip list --format=freeze on the GPU machine\n"
        "torch==2.11.0+cu130\n"
        "opencv_python_headless==4.12.0.88\n"
        "PyYAML\n"
        "-e git+somewhere#egg=local\n"
        "\n"
        "some-pkg @ file:///tmp/some_pkg.whl\n"
    )
    assert wheelhouse.read_target_packages(listing) == {
        "torch": "2.11.0+cu130",
        "opencv-python-headless": "4.12.0.88",
        "pyyaml": None,
        "some-pkg": None,
    }


def test_a_line_that_is_no_package_is_named_with_its_file_and_line(tmp_path, wheelhouse):
    listing = tmp_path / "target.txt"
    listing.write_text("numpy==2.5.2\nnot a package line\n")
    with pytest.raises(wheelhouse.SetupError, match=r"target.txt:2: 'not a package line'"):
        wheelhouse.read_target_packages(listing)


@pytest.mark.slow
def test_torch_goes_in_only_when_asked(tmp_path, wheelhouse):
    repo = wheelhouse.setup_env.REPO_ROOT
    without = wheelhouse.project_requirements(repo, "dev", False, tmp_path)
    names = {r.split(">")[0].split("<")[0].split("=")[0].strip() for r in without}
    assert {"detectron2", "pycocotools", "numpy", "pytest"} <= names
    assert not names & {"torch", "torchvision"}
    assert any(r.startswith("opencv-python-headless") and "<4.12" in r for r in without)
    with_torch = wheelhouse.project_requirements(repo, "", True, tmp_path)
    assert {"torch", "torchvision"} <= set(with_torch) and "pytest>=7" not in with_torch


def test_a_target_package_the_requirements_refuse_goes_into_the_wheelhouse(wheelhouse):
    target = {"opencv-python-headless": "5.1.0.95", "numpy": "2.5.2", "pyyaml": None}
    kept = wheelhouse.drop_unfit_target_packages(
        target, ["opencv-python-headless<4.12,>=4.8", "numpy", "Pillow>=7.1"]
    )
    assert kept == {"numpy": "2.5.2", "pyyaml": None}
    fits = {"opencv-python-headless": "4.11.0.86"}
    assert wheelhouse.drop_unfit_target_packages(fits, ["opencv-python-headless<4.12"]) == fits
