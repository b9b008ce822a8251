"""The set-up script's detectron2 logic: fallback build, sha256 check, pins, placeholder ops."""

import hashlib
import io
import tarfile
import types
from pathlib import Path

import pytest


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
    assert setup_env.compat_pins(package) == ["numpy<1.24", "setuptools<81"]


@pytest.mark.parametrize(
    "source, expected",
    [
        ("x = np.float(1)\n", ["numpy<1.24", "setuptools<81"]),
        ("def f(interp=Image.LINEAR): pass\n", ["Pillow<10", "setuptools<81"]),
        # Sized aliases and attribute access on them are still in numpy >= 1.24.
        (
            "a = np.int32(1); b = np.float64(2); c = np.bool_(1); d = np.int.__name__\n",
            ["setuptools<81"],
        ),
        ("y = 1\n", ["setuptools<81"]),
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
