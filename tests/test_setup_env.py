"""The set-up script: the fallback detectron2 (sha256, adaptations, pins, placeholder ops), the
interpreter and torch it builds on, and installs from a wheelhouse with no index."""

import dataclasses
import hashlib
import io
import os
import subprocess
import sys
import tarfile
import types
import zipfile
from pathlib import Path

import pytest
from conftest import REPO


@pytest.fixture(scope="module")
def setup_env(load_tool):
    """dev/setup_env.py, the set-up script (build tooling, beside the other dev scripts)."""
    return load_tool("setup_env", "dev")


def _fake_sdist(path: Path) -> str:
    """A tarball laid out like pb1-detectron2-0.6.tar.gz, with two tiny modules."""
    files = {
        "pb1-detectron2-0.6/setup.py": b"raise SystemExit('must not be used')\n",
        "pb1-detectron2-0.6/detectron2/__init__.py": b'__version__ = "0.6"\n',
        "pb1-detectron2-0.6/detectron2/data/build.py": b"import numpy as np\nx = np.int(3)\n",
        "pb1-detectron2-0.6/detectron2/model_zoo/configs/Base.yaml": b"MODEL: {}\n",
    }
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_wrong_sha256_names_the_file(tmp_path, setup_env):
    sdist = tmp_path / "pb1-detectron2-0.6.tar.gz"
    _fake_sdist(sdist)
    with pytest.raises(setup_env.SetupError) as err:
        setup_env.build_fallback_tree(sdist, tmp_path / "build")  # the real pinned digest
    message = str(err.value)
    assert str(sdist) in message and setup_env.FALLBACK_SHA256 in message
    assert not (tmp_path / "build").exists(), "nothing may be unpacked from an unverified archive"


def test_fallback_tree_is_pure_python_project_with_placeholder(tmp_path, setup_env):
    sdist = tmp_path / "pb1-detectron2-0.6.tar.gz"
    digest = _fake_sdist(sdist)
    project = setup_env.build_fallback_tree(sdist, tmp_path / "build", sha256=digest)
    package = project / "detectron2"
    assert sorted(p.relative_to(package).as_posix() for p in package.rglob("*") if p.is_file()) == [
        "_C.py",
        "__init__.py",
        "data/build.py",
        "model_zoo/configs/Base.yaml",
    ]
    pyproject = (project / "pyproject.toml").read_text()
    assert 'name = "detectron2"' in pyproject and 'version = "0.6"' in pyproject
    assert "fvcore>=0.1.5,<0.1.6" in pyproject and "black" not in pyproject
    # The sdist's own setup.py (which needs the missing C++ sources) is not used.
    assert not (project / "setup.py").exists()
    # A tree of another archive is not adapted (the list is written for the pinned one), so
    # its removed numpy alias still asks for the old numpy.
    assert setup_env.compat_pins(package) == ["numpy<1.24"]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("x = np.float(1)\n", ["numpy<1.24"]),
        ("y = np.str\n", ["numpy<1.24"]),
        ("def f(interp=Image.LINEAR): pass\n", ["Pillow<10"]),
        ("import os\nimport pkg_resources\n", ["setuptools<81"]),
        # Sized aliases and attribute access on them are still in numpy >= 1.24.
        ("a = np.int32(1); b = np.float64(2); c = np.bool_(1); d = np.int.__name__\n", []),
        ("# mentions pkg_resources only in a comment\ny = 1\n", []),
    ],
)
def test_compat_pins_follow_the_source(tmp_path, source, expected, setup_env):
    (tmp_path / "mod.py").write_text(source)
    assert setup_env.compat_pins(tmp_path) == expected


def test_placeholder_names_the_missing_op(setup_env):
    module = types.ModuleType("placeholder_C")
    exec(setup_env.PLACEHOLDER_C, module.__dict__)
    # What detectron2's collect_env asks of _C must work and say that the ops are absent.
    assert "pure-Python" in module.get_compiler_version()
    assert module.has_cuda() is False
    with pytest.raises(NotImplementedError, match=r"detectron2\._C\.box_iou_rotated is a compiled"):
        module.box_iou_rotated(None, None)
    with pytest.raises(AttributeError):
        module.__wrapped__  # dunder look-ups (pickle, inspect) must not return a fake op


def test_installed_detectron2_op_call_fails_clearly():
    from dd_detectron.evaluation import fast_coco_eval_available

    if fast_coco_eval_available():
        pytest.skip("this detectron2 has its compiled ops; the placeholder is not installed")
    import torch
    from detectron2.layers.rotated_boxes import pairwise_iou_rotated

    boxes = torch.tensor([[5.0, 5.0, 4.0, 4.0, 0.0]])
    with pytest.raises(NotImplementedError, match="box_iou_rotated"):
        pairwise_iou_rotated(boxes, boxes)


def test_detectron2_source_must_exist(tmp_path, setup_env):
    with pytest.raises(setup_env.SetupError, match="DETECTRON2_SOURCE=.*no such file"):
        setup_env.plan_detectron2(Path("python-unused"), str(tmp_path / "missing"), tmp_path)
    (tmp_path / "tree").mkdir()
    with pytest.raises(setup_env.SetupError, match="no setup.py or pyproject.toml"):
        setup_env.plan_detectron2(Path("python-unused"), str(tmp_path / "tree"), tmp_path)


def test_index_url_comes_from_pip_configuration(monkeypatch, setup_env):
    monkeypatch.setenv("PIP_INDEX_URL", "file:///srv/mirror/simple/")
    assert setup_env.index_simple_url() == "file:///srv/mirror/simple"


# The lines of detectron2 0.6 that the adaptations are written for, in miniature.
_ADAPTABLE = {
    "data/build.py": "import numpy as np\nh = np.zeros((3,), dtype=np.int)\nk = np.int32(1)\n",
    "data/transforms/transform.py": "def f(interp=Image.LINEAR):\n    return interp\n",
    "model_zoo/model_zoo.py": (
        "import os\n"
        "from typing import Optional\n"
        "import pkg_resources\n"
        "import torch\n\n\n"
        "def get_config_file(config_path):\n"
        "    cfg_file = pkg_resources.resource_filename(\n"
        '        "detectron2.model_zoo", os.path.join("configs", config_path)\n'
        "    )\n"
        "    return cfg_file\n"
    ),
}


def test_adaptations_replace_exactly_the_removed_apis(tmp_path, setup_env):
    for rel, text in _ADAPTABLE.items():
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_text(text)
    adaptations = [
        dataclasses.replace(a, files=1 if "numpy" in a.name else a.files)
        for a in setup_env.FALLBACK_ADAPTATIONS
    ]
    changed = setup_env.adapt_sources(tmp_path, adaptations)
    assert changed == {
        adaptations[0].name: ["data/build.py"],
        adaptations[1].name: ["data/transforms/transform.py"],
        adaptations[2].name: ["model_zoo/model_zoo.py"],
        adaptations[3].name: ["model_zoo/model_zoo.py"],
    }
    assert (tmp_path / "data/build.py").read_text() == (
        "import numpy as np\nh = np.zeros((3,), dtype=int)\nk = np.int32(1)\n"
    )
    assert "Image.BILINEAR" in (tmp_path / "data/transforms/transform.py").read_text()
    zoo = (tmp_path / "model_zoo/model_zoo.py").read_text()
    assert "pkg_resources" not in zoo
    namespace = {"__file__": str(tmp_path / "model_zoo" / "model_zoo.py")}
    exec(zoo.replace("import torch\n", ""), namespace)
    assert namespace["get_config_file"]("A/b.yaml") == str(
        tmp_path / "model_zoo" / "configs" / "A" / "b.yaml"
    )
    assert setup_env.compat_pins(tmp_path) == []


def test_an_adaptation_that_misses_its_files_stops_the_build(tmp_path, setup_env):
    (tmp_path / "build.py").write_text("x = np.int\n")
    with pytest.raises(setup_env.SetupError, match=r"changed 1 files \(build.py\), not the 7"):
        setup_env.adapt_sources(tmp_path, setup_env.FALLBACK_ADAPTATIONS[:1])
    assert (tmp_path / "build.py").read_text() == "x = np.int\n", "nothing written on failure"


def test_the_installed_detectron2_runs_its_numpy_pillow_and_model_zoo_lines():
    """The lines the adaptations replace, on this stack's numpy and Pillow, as the suite uses
    them (the fallback is adapted; a user's own detectron2 has upstream's versions)."""
    import numpy as np
    from detectron2 import model_zoo
    from detectron2.data.build import print_instances_class_histogram
    from detectron2.data.transforms import ExtentTransform
    from detectron2.structures.masks import polygons_to_bitmask

    print_instances_class_histogram(
        [{"annotations": [{"category_id": 0, "iscrowd": 0}]}], ["person"]
    )
    square = [np.array([1.0, 1.0, 5.0, 1.0, 5.0, 5.0, 1.0, 5.0])]
    assert polygons_to_bitmask(square, 8, 8).dtype == bool
    stretched = ExtentTransform((0, 0, 4, 4), (8, 8)).apply_image(np.zeros((4, 4), np.uint8))
    assert stretched.shape == (8, 8)
    path = model_zoo.get_config_file("COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml")
    assert os.path.isfile(path)


def test_the_model_zoo_works_without_pkg_resources(tmp_path):
    """setuptools 81 and later have no pkg_resources: the fallback's model zoo does not need it."""
    from dd_detectron.evaluation import fast_coco_eval_available

    if fast_coco_eval_available():
        pytest.skip("a compiled detectron2 of the user's, not the adapted fallback")
    code = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name == 'pkg_resources':\n"
        "            raise ImportError('pkg_resources blocked: setuptools >= 81')\n"
        "sys.meta_path.insert(0, Block())\n"
        "from detectron2 import model_zoo\n"
        "print(model_zoo.get_config_file('COCO-Keypoints/keypoint_rcnn_R_50_FPN_1x.yaml'))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip().endswith("keypoint_rcnn_R_50_FPN_1x.yaml")


def test_an_old_python_is_refused_by_version(setup_env):
    message = setup_env.python_too_old((3, 9, 18), "/usr/bin/python3.9")
    assert "Python 3.9.18 (/usr/bin/python3.9) is older than 3.10" in message
    assert setup_env.python_too_old((3, 10, 0), "x") is None
    assert setup_env.python_too_old((3, 13, 1), "x") is None


def _older_pythons():
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    found = sorted(root.glob("3.[6-9].*/bin/python3")) if root.is_dir() else []
    return found[-1:]  # the newest of them is enough


@pytest.mark.slow
@pytest.mark.skipif(not _older_pythons(), reason="no Python older than 3.10 under pyenv")
def test_make_setup_with_an_old_python_fails_and_leaves_no_stamp(tmp_path):
    python = _older_pythons()[0]
    venv = tmp_path / "venv"
    done = subprocess.run(
        ["make", "-C", str(REPO), "setup", f"PYTHON={python}", f"VENV={venv}"],
        capture_output=True,
        text=True,
    )
    assert done.returncode != 0
    version = subprocess.run([str(python), "--version"], capture_output=True, text=True)
    number = (version.stdout or version.stderr).split()[1]
    assert f"Python {number} ({python}) is older than 3.10" in done.stderr
    assert not (venv / ".dd-setup-done").exists() and not venv.exists()


@pytest.mark.parametrize(
    "info, fragment",
    [
        (
            {"torch": "1.7.1", "torch_full": "1.7.1", "torchvision": "0.8.2",
             "torchvision_full": "0.8.2"},
            "torch 1.7.1, torchvision 0.8.2 (here): torch is older than 1.8",
        ),
        (
            {"torch": "2.11.0", "torch_full": "2.11.0+cu130", "torchvision": "0.29.1",
             "torchvision_full": "0.29.1"},
            "torch 2.11.0+cu130, torchvision 0.29.1 (here): this torchvision is not the one "
            "built for this torch (that is torchvision 0.26.x)",
        ),
        (
            {"torch": "2.14.1", "torch_full": "2.14.1"},
            "torch 2.14.1, torchvision (none) (here): torch is installed but torchvision is "
            "not; install the torchvision built for this torch (0.29.x)",
        ),
        (
            {"torch": "2.14.1", "torch_full": "2.14.1", "torchvision": "0.29.1",
             "torchvision_full": "0.29.1",
             "torchvision_error": "RuntimeError: operator torchvision::nms does not exist"},
            "torchvision does not run: RuntimeError: operator torchvision::nms does not exist",
        ),
    ],
)  # fmt: skip
def test_an_unusable_torch_stops_the_set_up_naming_both_versions(info, fragment, setup_env):
    with pytest.raises(setup_env.SetupError) as err:
        setup_env.check_torch_pair(info, "here")
    assert fragment in str(err.value)


def test_a_matching_torch_pair_is_used_and_no_torch_means_install(setup_env):
    pair = {"torch": "2.11.0", "torch_full": "2.11.0+cu130", "torchvision": "0.26.0",
            "torchvision_full": "0.26.0+cu130"}  # fmt: skip
    assert setup_env.check_torch_pair(pair, "here") is True
    assert setup_env.check_torch_pair({"torch": "1.13.1", "torch_full": "1.13.1",
                                       "torchvision": "0.14.1", "torchvision_full": "0.14.1"},
                                      "here") is True  # fmt: skip
    assert setup_env.check_torch_pair({"torch_error": "ModuleNotFoundError"}, "here") is False
    assert setup_env.matching_torchvision("3.0.0") is None  # unknown series: not judged


def _fake_torch(site_packages: Path, torch_version="2.14.1", vision_version="0.29.1"):
    """A torch and torchvision that pass the set-up's probe (version, zeros, ops.nms)."""
    (site_packages / "torch").mkdir(parents=True)
    (site_packages / "torch" / "__init__.py").write_text(
        f"__version__ = {torch_version!r}\n\ndef zeros(*args, **kwargs):\n    return None\n"
    )
    (site_packages / "torchvision" / "ops").mkdir(parents=True)
    (site_packages / "torchvision" / "__init__.py").write_text(
        f"__version__ = {vision_version!r}\n"
    )
    (site_packages / "torchvision" / "ops" / "__init__.py").write_text(
        "def nms(*args):\n    return []\n"
    )


def _parent_venv(tmp_path, **versions):
    """A virtual environment (made from the interpreter running the tests, itself a venv's)
    whose own site-packages hold a torch; returns its python."""
    parent = tmp_path / "parent"
    subprocess.run(
        [sys.executable, "-m", "venv", "--without-pip", str(parent)],
        check=True,
        capture_output=True,
    )
    python = parent / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import site; print(site.getsitepackages()[0])"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    _fake_torch(Path(site), **versions)
    return python


@pytest.mark.slow
def test_a_torch_in_the_creating_virtual_environment_is_seen_by_the_new_one(tmp_path, setup_env):
    """An interpreter inside a virtual environment: ``venv --system-site-packages`` alone does
    not see that environment's torch; the set-up's venv does, and uses it as it is."""
    parent = _parent_venv(tmp_path)
    plain = tmp_path / "plain"
    subprocess.run(
        [str(parent), "-m", "venv", "--without-pip", "--system-site-packages", str(plain)],
        check=True,
    )
    assert "torch" not in setup_env.probe_interpreter(plain / "bin" / "python")  # the condition
    python = setup_env.ensure_venv(tmp_path / "venv", base_python=str(parent))
    seen = setup_env.probe_interpreter(python)
    assert seen["torch_full"] == "2.14.1" and seen["torchvision_full"] == "0.29.1"
    assert setup_env.check_torch_pair(seen, "the new venv") is True
    assert list((tmp_path / "venv").rglob("_dd_parent_environment.pth"))
    # The second run finds the venv and leaves it as it is.
    assert setup_env.ensure_venv(tmp_path / "venv", base_python=str(parent)) == python


@pytest.mark.slow
def test_a_mismatched_torch_of_the_creating_interpreter_stops_before_the_venv(tmp_path, setup_env):
    parent = _parent_venv(tmp_path, torch_version="2.11.0", vision_version="0.29.1")
    with pytest.raises(setup_env.SetupError, match=r"torch 2\.11\.0, torchvision 0\.29\.1"):
        setup_env.ensure_venv(tmp_path / "venv", base_python=str(parent))
    assert not (tmp_path / "venv").exists()


def _empty_wheel(folder: Path, filename: str) -> None:
    with zipfile.ZipFile(folder / filename, "w") as whl:
        whl.writestr("placeholder.txt", "")


def test_a_wheelhouse_for_another_python_is_refused_with_the_package_and_tag(tmp_path, setup_env):
    _empty_wheel(tmp_path, "fvcore-0.1.5.post20221221-py3-none-any.whl")
    _empty_wheel(tmp_path, "pycocotools-2.0.11-cp39-cp39-manylinux_2_17_x86_64.whl")
    with pytest.raises(setup_env.SetupError) as err:
        setup_env.check_wheelhouse(sys.executable, tmp_path)
    message = str(err.value)
    assert "pycocotools (wheel tag cp39-cp39-manylinux_2_17_x86_64)" in message
    assert "fvcore" not in message and str(tmp_path) in message
    (tmp_path / "pycocotools-2.0.11-cp39-cp39-manylinux_2_17_x86_64.whl").unlink()
    setup_env.check_wheelhouse(sys.executable, tmp_path)  # what is left installs here


def test_a_package_missing_from_the_wheelhouse_is_named_with_the_folder(tmp_path, setup_env):
    _empty_wheel(tmp_path, "fvcore-0.1.5.post20221221-py3-none-any.whl")
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index"]
    pip += ["--find-links", str(tmp_path), "dd-no-such-package-anywhere>=1"]
    with pytest.raises(setup_env.SetupError) as err:
        setup_env.pip_install(pip, "installing", tmp_path, sys.executable)
    assert str(err.value).startswith(
        f"wheelhouse {tmp_path} has no wheel of dd-no-such-package-anywhere>=1 for this Python"
    )


def test_a_detectron2_source_that_does_not_build_names_the_folder_and_error(tmp_path, setup_env):
    tree = tmp_path / "detectron2-src"
    tree.mkdir()
    (tree / "setup.py").write_text(
        "import sys\nsys.stderr.write('error: nvcc not found (a planted build failure)\\n')\n"
        "sys.exit(1)\n"
    )
    pip = [sys.executable, "-m", "pip", "install", "--dry-run", "--no-index"]
    with pytest.raises(setup_env.SetupError) as err:
        setup_env.build_source(pip, str(tree), [])
    message = str(err.value)
    assert message.startswith(f"DETECTRON2_SOURCE={tree} does not build: ")
    assert "error" in message.split("does not build: ")[1].lower()


def test_pip_cut_off_from_its_index_asks_for_a_wheelhouse(tmp_path, monkeypatch, setup_env):
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    with pytest.raises(setup_env.SetupError, match="give a wheelhouse"):
        setup_env.download_fallback_sdist(tmp_path / "empty-cache")


@pytest.mark.slow
def test_a_venv_that_cannot_see_the_torch_is_removed_for_the_next_run(
    tmp_path, monkeypatch, setup_env
):
    parent = _parent_venv(tmp_path)
    monkeypatch.setattr(setup_env, "_see_parent_environment", lambda python, folders: None)
    with pytest.raises(
        setup_env.SetupError, match=r"does not see torch 2\.14\.1 of .*\(it sees none\)"
    ):
        setup_env.ensure_venv(tmp_path / "venv", base_python=str(parent))
    assert not (tmp_path / "venv").exists()


def _another_supported_python():
    """An interpreter of another 3.10+ minor version than this one, from pyenv, or None."""
    root = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    mine = f"{sys.version_info[0]}.{sys.version_info[1]}."
    found = [
        p
        for p in sorted(root.glob("3.1[0-9].*/bin/python3")) if root.is_dir()
        if not p.parent.parent.name.startswith(mine)
    ]  # fmt: skip
    return found[0] if found else None


@pytest.mark.skipif(_another_supported_python() is None, reason="no other Python 3.10+ in pyenv")
def test_a_venv_of_another_python_is_kept_unless_that_python_was_chosen(tmp_path, setup_env):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    other = str(_another_supported_python())
    # `make test` after `make setup PYTHON=...`: the venv stays as it was made.
    assert setup_env.ensure_venv(venv, base_python=other) == venv / "bin" / "python"
    with pytest.raises(setup_env.SetupError, match=r"was made with Python 3\.\d+, not 3\.\d+"):
        setup_env.ensure_venv(venv, base_python=other, python_chosen=True)
    assert (venv / "bin" / "python").exists()
