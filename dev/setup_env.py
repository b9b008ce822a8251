#!/usr/bin/env python3
"""
Create the project's virtual environment and install what dd-detectron needs.

Run by ``make setup`` (and so by ``make demo`` / ``make test``) with the system interpreter::

    python3 dev/setup_env.py --venv .venv

Steps, each skipped when already done, so a second run changes nothing:

1. create ``.venv``; when the interpreter running this script can already import detectron2,
   the venv sees its site-packages, so that detectron2 and the torch it was built against are
   used as they are;
2. install torch and torchvision, unpinned (this machine kind resolves them from local disk);
3. detectron2, the first that applies:
   a. one importable in the venv (the user's own, or one installed by an earlier run);
   b. ``DETECTRON2_SOURCE``: a local source tree or a wheel;
   c. the fallback: a pure-Python detectron2 0.6 built from the ``pb1-detectron2`` source
      distribution (verified by sha256), whose compiled ops are replaced by a placeholder that
      names the op in its error;
4. the compatibility pins the chosen detectron2 needs, then this project (editable) and its test
   tools, in one resolver run.

Only the standard library is used: this script runs before anything is installed.
"""

import argparse
import hashlib
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tarfile
import urllib.request
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional

logger = logging.getLogger("setup_env")

REPO_ROOT = Path(__file__).resolve().parent.parent

# The fallback source distribution (see ../shared/DETECTRON2.md): its detectron2/ package is
# upstream v0.6; the archive itself cannot be installed by pip (direct-URL extra, no C++ sources).
FALLBACK_PROJECT = "pb1-detectron2"
FALLBACK_VERSION = "0.6"
FALLBACK_FILENAME = "pb1-detectron2-0.6.tar.gz"
FALLBACK_SHA256 = "5d2e9e51e523ec72f6a31cca04b0a515492e9514b773a3d134cedc0677170b29"

# Runtime requirements of detectron2 0.6 (its setup.py), minus the formatter it pins for its
# own development and the caffe2-only extras.
DETECTRON2_REQUIREMENTS = [
    "Pillow>=7.1",
    "matplotlib",
    "pycocotools>=2.0.2",
    "termcolor>=1.1",
    "yacs>=0.1.8",
    "tabulate",
    "cloudpickle",
    "tqdm>4.29.0",
    "tensorboard",
    "fvcore>=0.1.5,<0.1.6",
    "iopath>=0.1.7,<0.1.10",
    "omegaconf>=2.1",
    "hydra-core>=1.1",
]

# Source patterns of APIs removed upstream, and the pin that keeps each working. Deciding from
# the code rather than from detectron2.__version__ matters: a current source build still says
# "0.6" but no longer uses them.
COMPAT_RULES = [
    # numpy 1.24 removed the aliases np.int/np.float/np.bool (detectron2 0.6 data/build.py
    # calls np.int in every training loader build).
    (re.compile(r"\bnp\.(int|float|bool|object)\b(?![\w.])"), "numpy<1.24"),
    # Pillow 10 removed Image.LINEAR (a default argument, evaluated when data.transforms imports).
    (re.compile(r"\bImage\.LINEAR\b"), "Pillow<10"),
]
# Every detectron2 to date imports pkg_resources in model_zoo; setuptools 81 drops it.
ALWAYS_PINS = ["setuptools<81"]

PLACEHOLDER_C = '''"""
Placeholder for detectron2's compiled extension, written by dd-detectron's dev/setup_env.py.

This detectron2 was installed without its C++/CUDA ops (deformable convolution, rotated boxes,
the fast COCO evaluator). Keypoint R-CNN does not use them: torchvision supplies NMS and
ROIAlign. Any call into a missing op raises an error that names it.
"""

PLACEHOLDER = True


def get_compiler_version():
    return "none (pure-Python detectron2, compiled ops absent)"


def get_cuda_version():
    return "none (pure-Python detectron2, compiled ops absent)"


def has_cuda():
    return False


class _MissingOp:
    def __init__(self, name):
        self.__name__ = name

    def __call__(self, *args, **kwargs):
        raise NotImplementedError(
            f"detectron2._C.{self.__name__} is a compiled detectron2 op, and this detectron2 was "
            "installed without compiled ops (pure-Python fallback of dd-detectron's set-up). "
            "Use a model that does not need it, or install a compiled detectron2 and point "
            "DETECTRON2_SOURCE at it."
        )


def __getattr__(name):
    if name.startswith("__"):
        raise AttributeError(name)
    return _MissingOp(name)
'''


class SetupError(RuntimeError):
    """A set-up step failed; the message says which and what to do."""


@dataclass
class Detectron2Plan:
    """Which detectron2 to use.

    Attributes:
        origin: "installed", "source" (DETECTRON2_SOURCE) or "fallback".
        install_target: what to pass to pip, or None when nothing needs installing.
        scan_root: directory or wheel whose Python sources decide the compatibility pins.
    """

    origin: str
    install_target: Optional[str]
    scan_root: Path
    notes: List[str] = field(default_factory=list)


def run(cmd, **kwargs):
    logger.info("$ %s", " ".join(str(c) for c in cmd))
    subprocess.run([str(c) for c in cmd], check=True, **kwargs)


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def module_location(python, module: str) -> Optional[Path]:
    """Return the package directory of ``module`` as seen by ``python``, without importing it."""
    code = (
        "import importlib.util, sys\n"
        f"spec = importlib.util.find_spec({module!r})\n"
        "sys.stdout.write(spec.submodule_search_locations[0] if spec and "
        "spec.submodule_search_locations else '')\n"
    )
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    return Path(out.stdout) if out.returncode == 0 and out.stdout else None


def can_import(python, module: str) -> bool:
    return (
        subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 0
    )


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def verify_sha256(path: Path, expected: str) -> None:
    """Raise SetupError naming the file when its sha256 is not ``expected``."""
    actual = sha256_of(path)
    if actual != expected:
        raise SetupError(
            f"{path}: sha256 {actual} does not match the expected {expected}. The file is "
            "corrupt or not the pinned release; delete it and run the set-up again."
        )


def index_simple_url() -> str:
    """The package index pip is configured with (PIP_INDEX_URL, pip config, or pip's default).

    The address comes from pip's own configuration, so none is written in this repository.
    """
    env = os.environ.get("PIP_INDEX_URL")
    if env:
        return env.rstrip("/")
    out = subprocess.run(
        [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
        capture_output=True,
        text=True,
    )
    if out.returncode == 0 and out.stdout.strip():
        return out.stdout.strip().rstrip("/")
    from pip._internal.models.index import PyPI  # pip's built-in default index

    return PyPI.simple_url.rstrip("/")


def download_fallback_sdist(cache_dir: Path) -> Path:
    """Fetch the fallback sdist into ``cache_dir`` (once) and verify its sha256."""
    target = cache_dir / FALLBACK_FILENAME
    if target.exists():
        verify_sha256(target, FALLBACK_SHA256)
        return target
    cache_dir.mkdir(parents=True, exist_ok=True)
    # pip refuses this distribution (see module docstring), so read the index's JSON simple API.
    page = f"{index_simple_url()}/{FALLBACK_PROJECT}/"
    request = urllib.request.Request(
        page, headers={"Accept": "application/vnd.pypi.simple.v1+json"}
    )
    with urllib.request.urlopen(request, timeout=120) as response:
        files = json.load(response)["files"]
    matches = [f for f in files if f["filename"] == FALLBACK_FILENAME]
    if not matches:
        raise SetupError(f"{FALLBACK_FILENAME} is not listed by the package index at {page}")
    partial = target.with_suffix(".partial")
    with urllib.request.urlopen(matches[0]["url"], timeout=600) as response, open(
        partial, "wb"
    ) as f:
        shutil.copyfileobj(response, f)
    verify_sha256(partial, FALLBACK_SHA256)
    os.replace(partial, target)
    return target


def build_fallback_tree(sdist: Path, build_dir: Path, sha256: str = FALLBACK_SHA256) -> Path:
    """Unpack the sdist's ``detectron2/`` package into an installable pure-Python project.

    Args:
        sdist: the downloaded source distribution.
        build_dir: where the project directory is (re)created.
        sha256: the digest the archive must have.

    Returns:
        the project directory (pyproject.toml + detectron2/), ready for ``pip install``.
    """
    verify_sha256(sdist, sha256)
    project = build_dir / "detectron2-0.6-purepython"
    if project.exists():
        shutil.rmtree(project)
    project.mkdir(parents=True)
    prefix = f"pb1-detectron2-{FALLBACK_VERSION}/detectron2/"
    with tarfile.open(sdist) as tar:
        members = [m for m in tar.getmembers() if m.name.startswith(prefix) and m.isfile()]
        if not members:
            raise SetupError(f"{sdist}: no {prefix} package inside the archive")
        for member in members:
            rel = member.name[len(prefix) :]
            dest = project / "detectron2" / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            with tar.extractfile(member) as src, open(dest, "wb") as out:
                shutil.copyfileobj(src, out)
    (project / "detectron2" / "_C.py").write_text(PLACEHOLDER_C)
    requirements = ",\n".join(f'    "{r}"' for r in DETECTRON2_REQUIREMENTS)
    (project / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["setuptools>=61"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        "[project]\n"
        'name = "detectron2"\n'
        f'version = "{FALLBACK_VERSION}"\n'
        'description = "detectron2 0.6, pure-Python build '
        '(compiled ops replaced by a placeholder)"\n'
        'requires-python = ">=3.7"\n'
        f"dependencies = [\n{requirements}\n]\n\n"
        "[tool.setuptools.packages.find]\n"
        'include = ["detectron2*"]\n\n'
        "[tool.setuptools.package-data]\n"
        '"*" = ["*.yaml", "*.py"]\n'
    )
    return project


def compat_pins(scan_root: Path) -> List[str]:
    """The version pins detectron2's own sources need, decided from the code (see COMPAT_RULES).

    Args:
        scan_root: a detectron2 package directory, a source tree, or a wheel file.
    """
    sources = []
    if scan_root.is_file() and scan_root.suffix == ".whl":
        with zipfile.ZipFile(scan_root) as whl:
            sources = [
                whl.read(n).decode("utf-8", "replace") for n in whl.namelist() if n.endswith(".py")
            ]
    else:
        sources = [p.read_text(errors="replace") for p in sorted(scan_root.rglob("*.py"))]
    pins = []
    for pattern, pin in COMPAT_RULES:
        if any(pattern.search(text) for text in sources):
            pins.append(pin)
    return pins + ALWAYS_PINS


def plan_detectron2(python: Path, source: Optional[str], cache_dir: Path) -> Detectron2Plan:
    """Decide which detectron2 the venv gets (module docstring, step 3)."""
    if source:
        path = Path(source).expanduser().resolve()
        if not path.exists():
            raise SetupError(f"DETECTRON2_SOURCE={source}: no such file or directory")
        if path.is_file() and path.suffix != ".whl":
            raise SetupError(f"DETECTRON2_SOURCE={source}: expected a source tree or a .whl file")
        if path.is_dir() and not (
            (path / "setup.py").exists() or (path / "pyproject.toml").exists()
        ):
            raise SetupError(f"DETECTRON2_SOURCE={source}: no setup.py or pyproject.toml in it")
        marker = python.parent.parent / ".dd-detectron2-source"
        installed_from = marker.read_text().strip() if marker.exists() else None
        location = module_location(python, "detectron2")
        if location is not None and installed_from == str(path):
            return Detectron2Plan("installed", None, location, [f"from DETECTRON2_SOURCE {path}"])
        scan = path if path.is_file() else path / "detectron2"
        return Detectron2Plan("source", str(path), scan if scan.exists() else path)
    location = module_location(python, "detectron2")
    if location is not None:
        return Detectron2Plan("installed", None, location)
    sdist = download_fallback_sdist(cache_dir)
    project = build_fallback_tree(sdist, cache_dir)
    return Detectron2Plan("fallback", str(project), project / "detectron2")


def ensure_venv(venv: Path) -> Path:
    python = venv_python(venv)
    if python.exists():
        return python
    # A detectron2 importable by this interpreter (typically one built against its torch) is
    # used as it is: the venv sees this interpreter's site-packages.
    inherit = can_import(sys.executable, "detectron2")
    logger.info(
        "creating %s%s", venv, " (with system site-packages: detectron2 found)" if inherit else ""
    )
    cmd = [sys.executable, "-m", "venv", str(venv)]
    if inherit:
        cmd.append("--system-site-packages")
    run(cmd)
    return python


def setup(
    venv: Path, source: Optional[str], cache_dir: Path, extras: str = "dev"
) -> Detectron2Plan:
    """Run every step of the module docstring; return the detectron2 plan that was applied."""
    python = ensure_venv(venv)
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    if not (can_import(python, "torch") and can_import(python, "torchvision")):
        run(pip + ["torch", "torchvision"])
    plan = plan_detectron2(python, source, cache_dir)
    pins = compat_pins(plan.scan_root)
    logger.info(
        "detectron2: %s %s; pins: %s", plan.origin, plan.install_target or plan.scan_root, pins
    )
    # setuptools and wheel first: the editable install of this project and a source build of
    # detectron2 run without build isolation, so they build against the venv's torch.
    run(pip + ["wheel", *[p for p in pins if p.startswith("setuptools")]])
    targets = [f"-e{REPO_ROOT}[{extras}]" if extras else f"-e{REPO_ROOT}"]
    if plan.install_target:
        targets.append(plan.install_target)
    run(pip + ["--no-build-isolation", *targets, *pins])
    if plan.origin == "source":
        (venv / ".dd-detectron2-source").write_text(plan.install_target)
    check = (
        "import detectron2, dd_detectron; "
        "print('detectron2', detectron2.__version__, detectron2.__file__)"
    )
    run([python, "-c", check])
    return plan


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--venv", default=str(REPO_ROOT / ".venv"), help="virtual environment to create or update"
    )
    parser.add_argument(
        "--cache-dir",
        default=str(REPO_ROOT / "build" / "setup"),
        help="where the fallback source distribution is downloaded and built",
    )
    parser.add_argument(
        "--extras", default="dev", help="extras of dd-detectron to install ('' for none)"
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[setup_env] %(message)s")
    try:
        setup(
            Path(args.venv), os.environ.get("DETECTRON2_SOURCE"), Path(args.cache_dir), args.extras
        )
    except SetupError as e:
        logger.error("%s", e)
        return 1
    except subprocess.CalledProcessError as e:
        logger.error("command failed (exit %d): %s", e.returncode, " ".join(map(str, e.cmd)))
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
