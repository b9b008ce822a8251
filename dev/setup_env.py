#!/usr/bin/env python3
"""
Create the project's virtual environment and install what dd-detectron needs.

Run by ``make setup`` (and so by ``make demo`` / ``make test``) with the interpreter the
environment is made from::

    python3 dev/setup_env.py --venv .venv [--wheelhouse DIR]

Steps, each skipped when already done, so a second run changes nothing:

1. create the venv. When the interpreter running this script already imports a working torch
   and torchvision (a CUDA build in a container or a module system), or a detectron2, the venv
   sees its packages and uses them as they are; an interpreter that is itself inside a virtual
   environment is handled too (``--system-site-packages`` alone would only show the base
   installation's packages);
2. torch and torchvision, only when the venv has none (unpinned: this machine kind resolves them
   from local disk). A torch older than MIN_TORCH or a torchvision built for another torch stops
   the set-up with both versions named;
3. detectron2, the first that applies:
   a. one importable in the venv (the user's own, or one installed by an earlier run);
   b. ``DETECTRON2_SOURCE``: a local source tree or a wheel;
   c. the fallback: a pure-Python detectron2 0.6 built from the ``pb1-detectron2`` source
      distribution (verified by sha256), adapted to current numpy, Pillow and setuptools
      (FALLBACK_ADAPTATIONS), whose compiled ops are replaced by a placeholder that names the op
      in its error;
4. the pins a detectron2 that was not adapted needs (COMPAT_RULES), then this project (editable)
   and its test tools, in one resolver run.

With ``--wheelhouse DIR`` (a folder written by ``dev/make_wheelhouse.py``) nothing is fetched:
pip installs from that folder alone, and a package it lacks, or holds only for another Python
or platform, is refused with its name and wheel tag.

Only the standard library is used: this script runs before anything is installed. It must
still parse on old interpreters, so that it can refuse them by name.
"""

import sys

MIN_PYTHON = (3, 10)


def python_too_old(version_info, executable: str):
    """The refusal for an interpreter older than MIN_PYTHON, or None when it is recent enough."""
    if tuple(version_info[:2]) >= MIN_PYTHON:
        return None
    found = ".".join(str(v) for v in version_info[:3])
    return (
        "Python {} ({}) is older than {}.{}, the oldest dd-detectron supports; run the set-up "
        "with a newer interpreter, e.g. make setup PYTHON=python3.12".format(
            found, executable, *MIN_PYTHON
        )
    )


if __name__ == "__main__" and python_too_old(sys.version_info, sys.executable):
    sys.stderr.write("[setup_env] {}\n".format(python_too_old(sys.version_info, sys.executable)))
    sys.exit(1)

import argparse  # noqa: E402  (after the interpreter check, which must run on any Python)
import collections  # noqa: E402
import hashlib  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import os  # noqa: E402
import re  # noqa: E402
import shutil  # noqa: E402
import subprocess  # noqa: E402
import tarfile  # noqa: E402
import urllib.request  # noqa: E402
import zipfile  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Dict, List, Optional, Sequence  # noqa: E402

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

# The oldest torch the code runs on: detectron2 0.6's own floor.
MIN_TORCH = (1, 8)


@dataclass(frozen=True)
class Adaptation:
    """One source change applied to the fallback detectron2 0.6 when it is built.

    Attributes:
        name: what is replaced, for the log.
        pattern: regular expression over a file's text.
        replacement: ``re.sub`` replacement.
        why: the release that removed the old API, and what upstream detectron2 uses now.
        files: the files it must change (relative to the package); the sdist is pinned, so a
            count other than this means the tree is not the one the list was written for.
    """

    name: str
    pattern: str
    replacement: str
    why: str
    files: int


# Every line of detectron2 0.6 that stops it working on numpy >= 1.24, Pillow >= 10 or
# setuptools >= 81, with what replaces it. Upstream detectron2 made the same changes.
FALLBACK_ADAPTATIONS = [
    Adaptation(
        "numpy scalar aliases np.int, np.float, np.bool, np.str, np.object",
        r"\bnp\.(int|float|bool|str|object)\b(?![\w.])",
        r"\1",
        "numpy 1.24 removed the aliases; they were the builtins int, float, bool, str, object",
        files=7,
    ),
    Adaptation(
        "Image.LINEAR",
        r"\bImage\.LINEAR\b",
        "Image.BILINEAR",
        "Pillow 10 removed the alias LINEAR of BILINEAR (a default argument of data.transforms)",
        files=1,
    ),
    Adaptation(
        "import pkg_resources in model_zoo",
        r"^import pkg_resources\n",
        "",
        "setuptools 81 removed pkg_resources",
        files=1,
    ),
    Adaptation(
        "pkg_resources.resource_filename of a model-zoo config",
        r'pkg_resources\.resource_filename\(\s*"detectron2\.model_zoo",\s*'
        r'os\.path\.join\("configs", config_path\)\s*\)',
        'os.path.join(os.path.dirname(os.path.abspath(__file__)), "configs", config_path)',
        "setuptools 81 removed pkg_resources; the configs are package data beside model_zoo.py",
        files=1,
    ),
]

# Source patterns of APIs removed upstream, and the pin that keeps each working, for a
# detectron2 this script did not adapt (a user's own, DETECTRON2_SOURCE). Deciding from the code
# rather than from detectron2.__version__ matters: a current source build still says "0.6" but
# no longer uses the first two.
COMPAT_RULES = [
    (re.compile(r"\bnp\.(int|float|bool|str|object)\b(?![\w.])"), "numpy<1.24"),
    (re.compile(r"\bImage\.LINEAR\b"), "Pillow<10"),
    (re.compile(r"^\s*(import|from) pkg_resources\b", re.MULTILINE), "setuptools<81"),
]

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


class CommandFailed(subprocess.CalledProcessError):
    """A command exited non-zero; ``tail`` holds its last output lines."""

    def __init__(self, returncode, cmd, tail):
        super().__init__(returncode, cmd)
        self.tail = tail


@dataclass
class Detectron2Plan:
    """Which detectron2 to use.

    Attributes:
        origin: "installed", "source" (DETECTRON2_SOURCE), "fallback" or "wheelhouse".
        install_target: what to pass to pip, or None when nothing needs installing.
        scan_root: directory or wheel whose Python sources decide the compatibility pins, or
            None for the fallback, whose sources this script adapted.
        reinstall: replace the installed detectron2 (an unadapted fallback of an earlier set-up).
    """

    origin: str
    install_target: Optional[str]
    scan_root: Optional[Path]
    notes: List[str] = field(default_factory=list)
    reinstall: bool = False


def run(cmd, tail_lines: int = 60, **kwargs) -> None:
    """Run ``cmd``, echoing its output; raise CommandFailed with the last lines on failure."""
    cmd = [str(c) for c in cmd]
    logger.info("$ %s", " ".join(cmd))
    tail = collections.deque(maxlen=tail_lines)
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs
    )
    for line in proc.stdout:
        sys.stdout.write(line)
        tail.append(line.rstrip("\n"))
    sys.stdout.flush()
    if proc.wait() != 0:
        raise CommandFailed(proc.returncode, cmd, list(tail))


def venv_python(venv: Path) -> Path:
    return venv / "bin" / "python"


def python_json(python, code: str):
    """Run ``code`` (which prints one JSON value) with ``python``; None when it fails."""
    out = subprocess.run([str(python), "-c", code], capture_output=True, text=True)
    if out.returncode != 0:
        return None
    return json.loads(out.stdout.strip().splitlines()[-1])


def module_location(python, module: str) -> Optional[Path]:
    """Return the package directory of ``module`` as seen by ``python``, without importing it."""
    code = (
        "import importlib.util, json\n"
        f"spec = importlib.util.find_spec({module!r})\n"
        "print(json.dumps(spec.submodule_search_locations[0] if spec and "
        "spec.submodule_search_locations else ''))\n"
    )
    location = python_json(python, code)
    return Path(location) if location else None


def can_import(python, module: str) -> bool:
    return (
        subprocess.run([str(python), "-c", f"import {module}"], capture_output=True).returncode == 0
    )


# What an interpreter knows about itself: its version, whether it runs inside a virtual
# environment and where its site-packages are, and its torch and torchvision (imported, and
# torchvision's compiled NMS called, since a torchvision built for another torch imports fine and
# fails there).
_PROBE = r"""
import json, site, sys
info = {
    "version": list(sys.version_info[:3]),
    "in_venv": sys.prefix != getattr(sys, "base_prefix", sys.prefix),
    "site_packages": site.getsitepackages(),
}
try:
    import torch
    info["torch"] = torch.__version__.split("+")[0]
    info["torch_full"] = torch.__version__
except Exception as e:
    info["torch_error"] = "%s: %s" % (type(e).__name__, e)
try:
    import torchvision
    info["torchvision"] = torchvision.__version__.split("+")[0]
    info["torchvision_full"] = torchvision.__version__
    from torchvision.ops import nms
    nms(torch.zeros((1, 4)), torch.zeros(1), 0.5)
except ImportError as e:
    info.setdefault("torchvision_error", "%s: %s" % (type(e).__name__, e))
except Exception as e:
    info["torchvision_error"] = "%s: %s" % (type(e).__name__, str(e).splitlines()[0])
print(json.dumps(info))
"""


def probe_interpreter(python) -> Dict:
    info = python_json(python, _PROBE)
    if info is None:
        raise SetupError(f"{python}: cannot run this interpreter")
    return info


def _major_minor(version: str):
    parts = re.findall(r"\d+", version)
    return (int(parts[0]), int(parts[1])) if len(parts) >= 2 else None


def matching_torchvision(torch_version: str) -> Optional[str]:
    """The torchvision release series (``"0.N"``) built for ``torch_version``, or None when the
    series is not known (torch 3 and later): torch 1.N pairs with torchvision 0.N+1 and torch
    2.N with 0.N+15."""
    mm = _major_minor(torch_version)
    if mm is None or mm[0] not in (1, 2):
        return None
    return f"0.{mm[1] + (1 if mm[0] == 1 else 15)}"


def check_torch_pair(info: Dict, where: str) -> bool:
    """Whether ``info`` (probe_interpreter) shows a working torch + torchvision pair; False when
    it has no torch at all. A torch that is too old, a missing or mismatched torchvision, or one
    that does not run, raises SetupError naming both versions: a working torch is never
    replaced, so the set-up must stop rather than download another one."""
    if "torch" not in info:
        return False
    torch_v, vision_v = info["torch_full"], info.get("torchvision_full")
    both = f"torch {torch_v}, torchvision {vision_v or '(none)'} ({where})"
    mm = _major_minor(info["torch"])
    if mm is not None and mm < MIN_TORCH:
        raise SetupError(
            f"{both}: torch is older than {MIN_TORCH[0]}.{MIN_TORCH[1]}, the oldest this project "
            "runs on. Use an interpreter with a newer torch, or one without torch (the set-up "
            "then installs one)."
        )
    expected = matching_torchvision(info["torch"])
    if vision_v is None:
        raise SetupError(
            f"{both}: torch is installed but torchvision is not; install the torchvision built "
            f"for this torch ({expected + '.x' if expected else 'see its release table'})."
        )
    if expected and not info["torchvision"].startswith(expected + "."):
        raise SetupError(
            f"{both}: this torchvision is not the one built for this torch (that is "
            f"torchvision {expected}.x). Install the matching pair."
        )
    if "torchvision_error" in info:
        raise SetupError(f"{both}: torchvision does not run: {info['torchvision_error']}")
    return True


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
    if os.environ.get("PIP_NO_INDEX", "").lower() in ("1", "true", "yes", "on"):
        raise SetupError(
            f"no detectron2 is installed, PIP_NO_INDEX is set and {target} is absent: give a "
            "wheelhouse (make setup WHEELHOUSE=DIR, written by make wheelhouse on a connected "
            "machine) or DETECTRON2_SOURCE"
        )
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
    with (
        urllib.request.urlopen(matches[0]["url"], timeout=600) as response,
        open(partial, "wb") as f,
    ):
        shutil.copyfileobj(response, f)
    verify_sha256(partial, FALLBACK_SHA256)
    os.replace(partial, target)
    return target


def adapt_sources(package: Path, adaptations: Sequence[Adaptation] = FALLBACK_ADAPTATIONS):
    """Apply ``adaptations`` to the ``.py`` files under ``package``, in place.

    Returns:
        {adaptation name: [changed files, relative to ``package``]}.

    Raises:
        SetupError: an adaptation changed another number of files than it lists.
    """
    texts = {p: p.read_text() for p in sorted(package.rglob("*.py"))}
    changed = {}
    for adaptation in adaptations:
        regex = re.compile(adaptation.pattern, re.MULTILINE)
        hits = []
        for path, text in texts.items():
            new_text, count = regex.subn(adaptation.replacement, text)
            if count:
                texts[path] = new_text
                hits.append(path.relative_to(package).as_posix())
        if len(hits) != adaptation.files:
            raise SetupError(
                f"{package}: the adaptation '{adaptation.name}' changed {len(hits)} files "
                f"({', '.join(hits) or 'none'}), not the {adaptation.files} it was written for"
            )
        changed[adaptation.name] = hits
    for path, text in texts.items():
        path.write_text(text)
    return changed


def build_fallback_tree(sdist: Path, build_dir: Path, sha256: str = FALLBACK_SHA256) -> Path:
    """Unpack the sdist's ``detectron2/`` package into an installable pure-Python project,
    adapted to current numpy, Pillow and setuptools (FALLBACK_ADAPTATIONS).

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
    if sha256 == FALLBACK_SHA256:  # the list is written for the pinned archive
        for name, files in adapt_sources(project / "detectron2").items():
            logger.info("adapted %s in %s", name, ", ".join(files))
    (project / "detectron2" / "_C.py").write_text(PLACEHOLDER_C)
    requirements = ",\n".join(f'    "{r}"' for r in DETECTRON2_REQUIREMENTS)
    (project / "pyproject.toml").write_text(
        "[build-system]\n"
        'requires = ["setuptools>=61"]\n'
        'build-backend = "setuptools.build_meta"\n\n'
        "[project]\n"
        'name = "detectron2"\n'
        f'version = "{FALLBACK_VERSION}"\n'
        'description = "detectron2 0.6, pure-Python build adapted to current numpy and Pillow '
        '(compiled ops replaced by a placeholder)"\n'
        'requires-python = ">=3.7"\n'
        f"dependencies = [\n{requirements}\n]\n\n"
        "[tool.setuptools.packages.find]\n"
        'include = ["detectron2*"]\n\n'
        "[tool.setuptools.package-data]\n"
        '"*" = ["*.yaml", "*.py"]\n'
    )
    return project


def compat_pins(scan_root: Optional[Path]) -> List[str]:
    """The version pins detectron2's own sources need, decided from the code (COMPAT_RULES).

    Args:
        scan_root: a detectron2 package directory, a source tree, or a wheel file; None for the
            adapted fallback, which needs none.
    """
    if scan_root is None:
        return []
    if scan_root.is_file() and scan_root.suffix == ".whl":
        with zipfile.ZipFile(scan_root) as whl:
            sources = [
                whl.read(n).decode("utf-8", "replace") for n in whl.namelist() if n.endswith(".py")
            ]
    else:
        sources = [p.read_text(errors="replace") for p in sorted(scan_root.rglob("*.py"))]
    return [pin for pattern, pin in COMPAT_RULES if any(pattern.search(t) for t in sources)]


# --------------------------------------------------------------------------------------------
# Wheelhouses
# --------------------------------------------------------------------------------------------


def canonical_name(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def wheel_name_and_tags(filename: str):
    """(canonical project name, set of 'python-abi-platform' tags) of a wheel file name."""
    parts = filename[: -len(".whl")].split("-")
    if len(parts) not in (5, 6):
        raise SetupError(f"{filename}: not a wheel file name (name-version-python-abi-platform)")
    python_tags, abi_tags, platform_tags = parts[-3:]
    tags = {
        f"{p}-{a}-{pl}"
        for p in python_tags.split(".")
        for a in abi_tags.split(".")
        for pl in platform_tags.split(".")
    }
    return canonical_name(parts[0]), tags


_SUPPORTED_TAGS = (
    "import json\n"
    "try:\n"
    "    from packaging.tags import sys_tags\n"
    "except ImportError:\n"
    "    from pip._vendor.packaging.tags import sys_tags\n"
    "print(json.dumps([str(t) for t in sys_tags()]))\n"
)


def check_wheelhouse(python, wheelhouse: Path) -> None:
    """Refuse a wheelhouse with a project none of whose wheels installs on ``python``.

    Raises:
        SetupError: naming the folder, each such project and its wheels' tags.
    """
    if not wheelhouse.is_dir():
        raise SetupError(f"wheelhouse {wheelhouse}: no such folder")
    wheels = sorted(p.name for p in wheelhouse.glob("*.whl"))
    if not wheels:
        raise SetupError(f"wheelhouse {wheelhouse}: holds no .whl file")
    supported = python_json(python, _SUPPORTED_TAGS)
    if not supported:
        raise SetupError(f"{python}: cannot list the wheel tags this interpreter installs")
    supported = set(supported)
    by_project = collections.defaultdict(list)
    for name in wheels:
        project, tags = wheel_name_and_tags(name)
        by_project[project].append((name, tags))
    foreign = []
    for project, files in sorted(by_project.items()):
        if not any(tags & supported for _, tags in files):
            shown = ", ".join(sorted({t for _, tags in files for t in tags}))
            foreign.append(f"{project} (wheel tag {shown})")
    if foreign:
        version = ".".join(str(v) for v in probe_interpreter(python)["version"][:2])
        example = next((t for t in sorted(supported) if t.startswith("cp")), sorted(supported)[0])
        raise SetupError(
            f"wheelhouse {wheelhouse} holds wheels for another Python or platform: "
            f"{'; '.join(foreign)}. This interpreter ({python}, Python {version}) takes tags "
            f"such as {example}; make the wheelhouse for it (make wheelhouse "
            f"PYTHON_VERSION={version} ...)"
        )


def missing_from_wheelhouse(tail: Sequence[str]) -> Optional[str]:
    """The requirement pip could not find, from the last lines of its output."""
    for line in reversed(tail):
        match = re.search(r"No matching distribution found for (\S+)", line)
        if match:
            return match.group(1)
    return None


def last_error_line(tail: Sequence[str]) -> str:
    for line in reversed(tail):
        if re.search(r"error", line, re.IGNORECASE) and line.strip():
            return line.strip()
    return tail[-1].strip() if tail else "(no output)"


# --------------------------------------------------------------------------------------------
# The steps
# --------------------------------------------------------------------------------------------


def pip_install(cmd, what: str, wheelhouse: Optional[Path], python) -> None:
    """Run the pip command ``cmd``; a failure raises SetupError that names, for a wheelhouse
    install, the package the folder lacks and the folder, else pip's last error line."""
    try:
        run(cmd)
    except CommandFailed as e:
        missing = missing_from_wheelhouse(e.tail) if wheelhouse is not None else None
        if missing:
            raise SetupError(
                f"wheelhouse {wheelhouse} has no wheel of {missing} for this Python ({python}); "
                "add it (make wheelhouse on a connected machine) and run the set-up again"
            ) from e
        raise SetupError(f"{what} failed: {last_error_line(e.tail)}") from e


def build_source(pip, source: str, pins: Sequence[str]) -> None:
    """Install DETECTRON2_SOURCE with the pip command prefix ``pip``; a build that fails raises
    SetupError naming the folder and the build's last error line."""
    try:
        run(list(pip) + ["--no-build-isolation", source, *pins])
    except CommandFailed as e:
        raise SetupError(
            f"DETECTRON2_SOURCE={source} does not build: {last_error_line(e.tail)}"
        ) from e


def plan_detectron2(
    python: Path, source: Optional[str], cache_dir: Path, wheelhouse: Optional[Path] = None
) -> Detectron2Plan:
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
    outdated = location is not None and is_unadapted_fallback(location)
    if location is not None and not outdated:
        return Detectron2Plan("installed", None, location)
    if wheelhouse is not None:
        wheels = sorted(wheelhouse.glob("detectron2-*.whl"))
        if not wheels:
            raise SetupError(
                f"wheelhouse {wheelhouse} has no detectron2 wheel and none is installed: make "
                "the wheelhouse with make wheelhouse, which builds the fallback detectron2"
            )
        return Detectron2Plan("wheelhouse", "detectron2", wheels[-1], reinstall=outdated)
    sdist = download_fallback_sdist(cache_dir)
    project = build_fallback_tree(sdist, cache_dir)
    return Detectron2Plan("fallback", str(project), None, reinstall=outdated)


def is_unadapted_fallback(location: Path) -> bool:
    """Whether the detectron2 at ``location`` is a fallback of this script built without
    FALLBACK_ADAPTATIONS (placeholder ops, removed APIs still used): it is rebuilt."""
    placeholder = location / "_C.py"
    if (
        not placeholder.is_file()
        or "dd-detectron's dev/setup_env.py" not in placeholder.read_text()
    ):
        return False
    return bool(compat_pins(location))


def ensure_venv(venv: Path, base_python: str = sys.executable, python_chosen: bool = False) -> Path:
    """Create ``venv`` from ``base_python`` (module docstring, step 1); return its python.

    An existing venv is kept. If it has another Python version than ``base_python``, that is
    refused when the user chose ``base_python`` (``make ... PYTHON=...``) and only logged
    otherwise: a later plain ``make test`` must go on with the venv ``make setup PYTHON=...``
    made.

    Raises:
        SetupError: the venv exists with another Python version than the one chosen, or the base
            interpreter's torch is unusable (check_torch_pair), or the venv does not see it.
    """
    base = probe_interpreter(base_python)
    python = venv_python(venv)
    if python.exists():
        have = ".".join(map(str, probe_interpreter(python)["version"][:2]))
        wanted = ".".join(map(str, base["version"][:2]))
        if have != wanted:
            if python_chosen:
                raise SetupError(
                    f"{venv} was made with Python {have}, not {wanted} ({base_python}): remove "
                    "it, or give another VENV"
                )
            logger.info("keeping %s, made with Python %s", venv, have)
        return python
    base_torch = check_torch_pair(base, f"from {base_python}")
    inherit = base_torch or can_import(base_python, "detectron2")
    logger.info(
        "creating %s from %s%s",
        venv,
        base_python,
        " (seeing its packages: torch or detectron2 found there)" if inherit else "",
    )
    cmd = [base_python, "-m", "venv", str(venv)]
    if inherit:
        cmd.append("--system-site-packages")
    try:
        run(cmd)
        if inherit and base["in_venv"]:
            _see_parent_environment(python, base["site_packages"])
        if base_torch:
            seen = probe_interpreter(python)
            if seen.get("torch_full") != base["torch_full"]:
                raise SetupError(
                    f"{venv} does not see torch {base['torch_full']} of {base_python} "
                    f"(it sees {seen.get('torch_full', 'none')})"
                )
    except BaseException:
        # A venv this run made but could not finish is removed, so that the next run starts
        # again instead of taking it for a finished one.
        shutil.rmtree(venv, ignore_errors=True)
        raise
    return python


def _see_parent_environment(python: Path, parent_site_packages: Sequence[str]) -> None:
    """Make the venv of ``python`` see the site-packages of the virtual environment it was made
    from. ``--system-site-packages`` shows the base installation's packages, not that
    environment's; a .pth file's entries come after the venv's own site-packages, so what the
    venv installs itself still wins."""
    own = probe_interpreter(python)["site_packages"][0]
    lines = [p for p in parent_site_packages if os.path.isdir(p)]
    Path(own, "_dd_parent_environment.pth").write_text("\n".join(lines) + "\n")
    logger.info("the venv also sees %s", ", ".join(lines))


def setup(
    venv: Path,
    source: Optional[str],
    cache_dir: Path,
    extras: str = "dev",
    wheelhouse: Optional[Path] = None,
    base_python: str = sys.executable,
    python_chosen: bool = False,
) -> Detectron2Plan:
    """Run every step of the module docstring; return the detectron2 plan that was applied."""
    python = ensure_venv(venv, base_python, python_chosen)
    pip = [python, "-m", "pip", "install", "--disable-pip-version-check"]
    if wheelhouse is not None:
        wheelhouse = wheelhouse.resolve()
        check_wheelhouse(python, wheelhouse)
        pip += ["--no-index", "--find-links", str(wheelhouse)]

    def install(args, what):
        pip_install(pip + list(args), what, wheelhouse, python)

    if not check_torch_pair(probe_interpreter(python), f"in {venv}"):
        install(["torch", "torchvision"], "installing torch and torchvision")
        check_torch_pair(probe_interpreter(python), f"in {venv}")
    plan = plan_detectron2(python, source, cache_dir, wheelhouse)
    pins = compat_pins(plan.scan_root)
    logger.info(
        "detectron2: %s %s; pins: %s",
        plan.origin,
        plan.install_target or plan.scan_root,
        pins or "none",
    )
    # setuptools and wheel first: the editable install of this project and a source build of
    # detectron2 run without build isolation, so they build against the venv's torch.
    setuptools_pins = [p for p in pins if p.startswith("setuptools")] or ["setuptools>=64"]
    install(["wheel", *setuptools_pins], "installing setuptools and wheel")
    targets = [f"-e{REPO_ROOT}[{extras}]" if extras else f"-e{REPO_ROOT}"]
    if plan.origin == "source":
        build_source(pip, plan.install_target, pins)
    elif plan.reinstall:
        install(["--force-reinstall", "--no-deps", plan.install_target], "replacing detectron2")
    elif plan.install_target:
        targets.append(plan.install_target)
    install(["--no-build-isolation", *targets, *pins], "installing dd-detectron")
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
    parser.add_argument(
        "--wheelhouse",
        default=os.environ.get("WHEELHOUSE") or None,
        help="install from this folder of wheels alone (make wheelhouse writes one)",
    )
    parser.add_argument(
        "--python-chosen",
        action="store_true",
        help="the user chose this interpreter: refuse a venv made with another Python version",
    )
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[setup_env] %(message)s")
    try:
        setup(
            Path(args.venv),
            os.environ.get("DETECTRON2_SOURCE"),
            Path(args.cache_dir),
            args.extras,
            Path(args.wheelhouse) if args.wheelhouse else None,
            python_chosen=args.python_chosen,
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
