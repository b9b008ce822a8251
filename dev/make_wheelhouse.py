#!/usr/bin/env python3
"""
Write every wheel dd-detectron needs for a target machine into one folder, on a connected
machine, so that ``make setup WHEELHOUSE=DIR`` installs there with no network::

    python3 dev/make_wheelhouse.py --dest DIR [--python-version 3.12] [--platform TAG ...]
        [--with-torch] [--target-has FILE]

(``make wheelhouse WHEELHOUSE=DIR [PYTHON_VERSION=3.12 PLATFORM=TAG WITH_TORCH=1
TARGET_HAS=FILE]``). The folder holds:

- the fallback detectron2 (the adapted pure-Python 0.6 build of ``setup_env.py``), as a wheel;
- this project's requirements and test tools, and theirs, as wheels for the target Python and
  platform (compiled ones such as pycocotools for that Python). A requirement published only as
  a source distribution is built here into a wheel, which must come out pure Python;
- torch and torchvision only with ``--with-torch``: a machine that has its own torch keeps it.

``--target-has FILE`` lists what the target already has (``pip list --format=freeze`` there,
or bare names): the resolution keeps to those versions, and their wheels are left out.

The folder is written beside its final place and renamed when complete, so an interrupted run
leaves the previous wheelhouse as it was.
"""

import argparse
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path
from typing import Dict, List, Optional


def _load_setup_env():
    """dev/setup_env.py, beside this script (the dev scripts are no package)."""
    path = Path(__file__).resolve().parent / "setup_env.py"
    spec = importlib.util.spec_from_file_location("setup_env", path)
    module = sys.modules.setdefault("setup_env", importlib.util.module_from_spec(spec))
    if not hasattr(module, "setup"):
        spec.loader.exec_module(module)
    return module


setup_env = _load_setup_env()
SetupError, canonical_name = setup_env.SetupError, setup_env.canonical_name
run, wheel_name_and_tags = setup_env.run, setup_env.wheel_name_and_tags

logger = logging.getLogger("make_wheelhouse")

# manylinux tags of x86-64 Linux with glibc 2.17 to 2.28 (pip matches each tag exactly): wheels
# that install on every current distribution.
DEFAULT_PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(28, 16, -1)] + [
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
]
# What setup_env.py installs besides the requirements: the editable install builds with them.
BUILD_REQUIREMENTS = ["setuptools>=64", "wheel"]
TORCH_PACKAGES = {"torch", "torchvision"}
# Requirements of detectron2 0.6 published as source distributions only, built here before the
# download (pip's resolver reports a missing one as a conflict, not by name, when another
# package pins it: omegaconf pins antlr4).
SOURCE_ONLY = ["fvcore>=0.1.5,<0.1.6", "antlr4-python3-runtime==4.9.*"]


def project_requirements(repo: Path, extras: str, with_torch: bool, work: Path) -> List[str]:
    """This project's requirements (with ``extras``), read from the metadata of its own wheel."""
    pip_wheel = [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"]
    run(pip_wheel + ["-w", work, repo])
    wheel = next(work.glob("dd_detectron-*.whl"))
    with zipfile.ZipFile(wheel) as whl:
        metadata = whl.read(next(n for n in whl.namelist() if n.endswith("METADATA"))).decode()
    wheel.unlink()
    requirements = []
    for line in metadata.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        requirement, _, marker = line[len("Requires-Dist:") :].strip().partition(";")
        extra = re.search(r"extra\s*==\s*['\"]([^'\"]+)['\"]", marker)
        if extra and extra.group(1) not in extras.split(","):
            continue
        name = canonical_name(re.match(r"[A-Za-z0-9_.-]+", requirement).group(0))
        if name in TORCH_PACKAGES and not with_torch:
            continue
        requirements.append(requirement.strip())
    return requirements


def read_target_packages(path: Optional[Path]) -> Dict[str, Optional[str]]:
    """{canonical name: version or None} from a ``pip freeze``-style file."""
    if path is None:
        return {}
    packages = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line or line.startswith("-"):
            continue
        match = re.match(r"^([A-Za-z0-9_.-]+)\s*(?:==\s*([^\s;@]+))?\s*(?:@.*)?$", line)
        if not match:
            raise SetupError(f"{path}:{number}: {raw!r} is not 'name' or 'name==version'")
        packages[canonical_name(match.group(1))] = match.group(2)
    return packages


def drop_unfit_target_packages(
    target: Dict[str, Optional[str]], requirements: List[str]
) -> Dict[str, Optional[str]]:
    """``target`` without the packages whose version one of ``requirements`` refuses (an OpenCV
    outside the drawing range, say): their wheels go into the wheelhouse, and the venv's copy
    shadows the machine's."""
    try:
        from packaging.requirements import Requirement
    except ImportError:  # a bare interpreter: pip's own copy (importing pip turns off
        # setuptools' distutils shim for the rest of the process, so only as a last resort)
        from pip._vendor.packaging.requirements import Requirement

    specifiers = {}
    for text in requirements:
        requirement = Requirement(text)
        specifiers.setdefault(canonical_name(requirement.name), []).append(requirement.specifier)
    kept = {}
    for name, version in target.items():
        refusing = [str(s) for s in specifiers.get(name, []) if version and version not in s]
        if refusing:
            logger.info(
                "the target's %s %s is outside %s: its wheel goes in", name, version, refusing
            )
            continue
        kept[name] = version
    return kept


def target_options(python_version: str, platforms: List[str]) -> List[str]:
    options = ["--only-binary=:all:", "--python-version", python_version, "--implementation", "cp"]
    for platform in platforms:
        options += ["--platform", platform]
    return options


def download_all(
    requirements: List[str], dest: Path, options: List[str], constraints: Optional[Path]
) -> None:
    """``pip download`` the requirements for the target into ``dest``. A requirement with no
    wheel for the target (SOURCE_ONLY, and any other pip names) is built here into a pure-Python
    wheel, and the download retried."""
    built = set()
    for requirement in SOURCE_ONLY:
        build_pure_wheel(requirement, dest)
        built.add(canonical_name(re.split(r"[<>=!~; ]", requirement)[0]))
    while True:
        cmd = [sys.executable, "-m", "pip", "download", "--disable-pip-version-check"]
        cmd += options + ["--find-links", dest, "-d", dest]
        if constraints is not None:
            cmd += ["-c", constraints]
        try:
            run(cmd + requirements)
            return
        except setup_env.CommandFailed as e:
            missing = setup_env.missing_from_wheelhouse(e.tail)
            if missing is None or canonical_name(re.split(r"[<>=!~; ]", missing)[0]) in built:
                raise SetupError(f"pip download failed: {setup_env.last_error_line(e.tail)}") from e
        build_pure_wheel(missing, dest)
        built.add(canonical_name(re.split(r"[<>=!~; ]", missing)[0]))


def build_pure_wheel(requirement: str, dest: Path) -> None:
    """Build ``requirement`` from its source here into ``dest``; it must be pure Python."""
    logger.info("%s: building a wheel from its source distribution", requirement)
    before = set(dest.glob("*.whl"))
    run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", dest, requirement])
    for wheel in set(dest.glob("*.whl")) - before:
        _, tags = wheel_name_and_tags(wheel.name)
        if not any(t.endswith("-none-any") for t in tags):
            wheel.unlink()
            raise SetupError(
                f"{requirement} has no wheel for the target and builds only for this machine "
                f"({', '.join(sorted(tags))}): build it on the target's Python and platform"
            )


def make_wheelhouse(
    dest: Path,
    python_version: str,
    platforms: List[str],
    with_torch: bool = False,
    target_has: Optional[Path] = None,
    extras: str = "dev",
    cache_dir: Path = setup_env.REPO_ROOT / "build" / "setup",
) -> Dict:
    """Write the wheelhouse (module docstring); return its manifest."""
    target = read_target_packages(target_has)
    partial = dest.with_name(dest.name + ".partial")
    if partial.exists():
        shutil.rmtree(partial)
    partial.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as work:
        work = Path(work)
        sdist = setup_env.download_fallback_sdist(cache_dir)
        project = setup_env.build_fallback_tree(sdist, cache_dir)
        run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q"] + ["-w", partial, project])
        requirements = project_requirements(setup_env.REPO_ROOT, extras, with_torch, work)
        target = drop_unfit_target_packages(
            target, requirements + setup_env.DETECTRON2_REQUIREMENTS + BUILD_REQUIREMENTS
        )
        constraints = None
        pinned = {n: v for n, v in target.items() if v and "+" not in v}
        if pinned:
            constraints = work / "target-constraints.txt"
            constraints.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pinned.items())))
        download_all(
            requirements + BUILD_REQUIREMENTS,
            partial,
            target_options(python_version, platforms),
            constraints,
        )
    left_out = []
    for wheel in sorted(partial.glob("*.whl")):
        name, _ = wheel_name_and_tags(wheel.name)
        if name in target and name != "detectron2":
            left_out.append(wheel.name)
            wheel.unlink()
    files = sorted(partial.glob("*.whl"))
    manifest = {
        "python_version": python_version,
        "platforms": platforms,
        "with_torch": with_torch,
        "target_has": str(target_has) if target_has else None,
        "left_out_as_on_target": left_out,
        "files": {w.name: w.stat().st_size for w in files},
        "total_bytes": sum(w.stat().st_size for w in files),
    }
    (partial / "wheelhouse.json").write_text(json.dumps(manifest, indent=2) + "\n")
    if dest.exists():
        shutil.rmtree(dest)
    os.replace(partial, dest)
    return manifest


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dest", required=True, help="the wheelhouse folder to write")
    parser.add_argument(
        "--python-version",
        default=f"{sys.version_info[0]}.{sys.version_info[1]}",
        help="the target's Python, e.g. 3.12 (default: this interpreter's)",
    )
    parser.add_argument(
        "--platform",
        action="append",
        help="a target platform tag, repeatable (default: manylinux x86-64, glibc 2.17-2.28)",
    )
    parser.add_argument("--with-torch", action="store_true", help="add torch and torchvision")
    parser.add_argument(
        "--target-has", help="file listing the packages the target already has (pip freeze)"
    )
    parser.add_argument("--extras", default="dev", help="extras of dd-detectron to include")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="[make_wheelhouse] %(message)s")
    platforms = [p for value in args.platform or [] for p in value.split()] or DEFAULT_PLATFORMS
    try:
        manifest = make_wheelhouse(
            Path(args.dest).resolve(),
            args.python_version,
            platforms,
            args.with_torch,
            Path(args.target_has) if args.target_has else None,
            args.extras,
        )
    except (SetupError, OSError) as e:
        logger.error("%s", e)
        return 1
    except subprocess.CalledProcessError as e:
        logger.error("command failed (exit %d): %s", e.returncode, " ".join(map(str, e.cmd)))
        return 1
    logger.info(
        "%s: %d wheels, %.1f MiB for Python %s%s",
        args.dest,
        len(manifest["files"]),
        manifest["total_bytes"] / 2**20,
        args.python_version,
        (
            f" ({len(manifest['left_out_as_on_target'])} left out: on the target)"
            if manifest["left_out_as_on_target"]
            else ""
        ),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
