#!/usr/bin/env python
"""Prepare and check the COCO tree of the paper's keypoint experiments under $DETECTRON2_DATASETS.

    python datasets/prepare_coco.py            # write the co-35 and co-80 files from COCO 2014
    python datasets/prepare_coco.py --check    # verify the tree; print what is missing and where
    python datasets/prepare_coco.py --check --splits co-115 un-120 minival   # one setting only

Writing (needs COCO 2014's person_keypoints_{train,val}2014.json and a list of the minival
images: person_keypoints_val2017.json, since COCO 2017 val is 2014 minival, or Detectron's
instances_minival2014.json):

- co-35 = COCO 2014 val minus minival, with its person keypoint labels:
  coco/annotations/person_keypoints_valminusminival2014.json (the file detectron2's builtin
  keypoints_coco_2014_valminusminival reads);
- co-80 = COCO 2014 train as images only, no labels, for the annotation stage:
  coco/annotations/image_info_train2014.json (dataset coco_2014_train_unlabeled; its true labels
  stay in person_keypoints_train2014.json, dataset keypoints_coco_2014_train).

When person_keypoints_train2017.json is there, the script verifies that co-35 and co-80 are
disjoint and together are exactly co-115 (COCO 2017 train), by image id and by file name
(2014 "COCO_train2014_000000000009.jpg" is 2017 "000000000009.jpg"). Files are written
atomically and the same inputs always give the same bytes.

Checking (--check) reads every JSON file of the selected splits and looks for every image they
list; it exits with status 1 when anything is missing. See datasets/README.md for the tree.
"""

import argparse
import json
import os
import sys
from collections import OrderedDict
from typing import Dict, List, Optional, Sequence, Tuple

from dd_detectron.data.datasets import datasets_root
from dd_detectron.data.datasets.coco import FROM_PREPARE, PAPER_SPLITS, get_paper_split
from dd_detectron.data.datasets.image_folder import BUILTIN_IMAGE_FOLDERS, list_image_files
from dd_detectron.utils import atomic_write

# Inputs of the writing step, relative to the datasets root.
VAL2014_KEYPOINTS = "coco/annotations/person_keypoints_val2014.json"
TRAIN2014_KEYPOINTS = get_paper_split("co-80 (truth)").json_file
# The minival image list, in order of preference: COCO 2017 val is exactly Detectron's 2014
# minival, so the 2017 file a reproduction needs anyway (for evaluation) serves; Detectron's own
# list is accepted when it is there instead.
MINIVAL_SOURCES = (
    get_paper_split("minival").json_file,
    "coco/annotations/instances_minival2014.json",
)
CO115_KEYPOINTS = get_paper_split("co-115").json_file
CO35 = get_paper_split("co-35")
CO80 = get_paper_split("co-80")
# The archive that holds each input, named in messages (COCO's download page lists them).
ARCHIVE_OF = {
    VAL2014_KEYPOINTS: "annotations_trainval2014.zip",
    TRAIN2014_KEYPOINTS: "annotations_trainval2014.zip",
    MINIVAL_SOURCES[0]: "annotations_trainval2017.zip",
    MINIVAL_SOURCES[1]: "Detectron's minival annotation files",
    CO115_KEYPOINTS: "annotations_trainval2017.zip",
}
# Images listed in messages when some are missing; the rest are counted.
MAX_NAMED_MISSING = 5


def read_json(path: str) -> dict:
    """Reads a COCO JSON file; the error names the file."""
    try:
        with open(path) as f:
            return json.load(f)
    except ValueError as e:
        raise SystemExit(f"error: {path} is not a JSON file: {e}")


def write_json_atomic(path: str, data: dict) -> None:
    """Writes JSON so that a reader never sees a partial file (temp file, then rename)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with atomic_write(path) as f:
        json.dump(data, f, separators=(",", ":"))


def coco_number(file_name: str) -> str:
    """The 12-digit image number of a COCO file name, 2014 or 2017 style."""
    return os.path.splitext(os.path.basename(file_name))[0].rsplit("_", 1)[-1]


def _require(root: str, rel: str) -> str:
    path = os.path.join(root, rel)
    if not os.path.isfile(path):
        raise SystemExit(
            f"error: {path} is missing. It is in COCO's "
            f"{ARCHIVE_OF.get(rel, 'download')}; unpack it "
            f"so that this path exists (see datasets/README.md), or run with --check."
        )
    return path


def _minival_ids(root: str) -> Tuple[str, set]:
    for rel in MINIVAL_SOURCES:
        path = os.path.join(root, rel)
        if os.path.isfile(path):
            return rel, {img["id"] for img in read_json(path)["images"]}
    raise SystemExit(
        "error: no list of the minival images: need "
        + " or ".join(f"{os.path.join(root, rel)} ({ARCHIVE_OF[rel]})" for rel in MINIVAL_SOURCES)
    )


def _info(source: dict, description: str) -> dict:
    info = dict(source.get("info") or {})
    info["description"] = description
    return info


def prepare(root: str) -> Dict[str, dict]:
    """Writes co-35 and co-80 (see the module docstring) and verifies them against co-115.

    Args:
        root: the datasets root.

    Returns:
        per written split: its file, image and annotation counts; and "co-115": the result of
        the verification (or why it did not run).

    Raises:
        SystemExit: an input is missing or inconsistent (the message names the file).
    """
    val2014_path = _require(root, VAL2014_KEYPOINTS)
    train2014_path = _require(root, TRAIN2014_KEYPOINTS)
    minival_source, minival = _minival_ids(root)
    val2014 = read_json(val2014_path)
    val_ids = {img["id"] for img in val2014["images"]}
    outside = sorted(minival - val_ids)
    if outside:
        raise SystemExit(
            f"error: {len(outside)} minival images of {minival_source} are not in "
            f"{VAL2014_KEYPOINTS} (e.g. ids {outside[:MAX_NAMED_MISSING]}); these files are not "
            "COCO 2014 val and 2017 val."
        )
    # co-35: every val2014 image outside minival (images without people included, as in COCO's
    # keypoint files; keypoint training skips them), and all of their annotations.
    co35_images = [img for img in val2014["images"] if img["id"] not in minival]
    co35_ids = {img["id"] for img in co35_images}
    co35_annotations = [
        ann for ann in val2014.get("annotations", []) if ann["image_id"] in co35_ids
    ]
    co35 = OrderedDict(
        info=_info(
            val2014,
            f"COCO 2014 val minus minival (co-35): {VAL2014_KEYPOINTS} without the "
            f"images of {minival_source}; written by dd-detectron datasets/prepare_coco.py",
        ),
        licenses=val2014.get("licenses", []),
        images=co35_images,
        annotations=co35_annotations,
        categories=val2014["categories"],
    )
    write_json_atomic(os.path.join(root, CO35.json_file), co35)
    del val2014, co35

    train2014 = read_json(train2014_path)
    # co-80 for the annotation stage: images and categories only, like COCO's image_info files.
    co80 = OrderedDict(
        info=_info(
            train2014,
            f"COCO 2014 train as unlabeled images (co-80): the images of "
            f"{TRAIN2014_KEYPOINTS} without annotations; written by dd-detectron "
            "datasets/prepare_coco.py",
        ),
        licenses=train2014.get("licenses", []),
        images=train2014["images"],
        categories=train2014["categories"],
    )
    write_json_atomic(os.path.join(root, CO80.json_file), co80)
    report = OrderedDict()
    report["co-35"] = dict(
        file=os.path.join(root, CO35.json_file),
        images=len(co35_images),
        annotations=len(co35_annotations),
        minival_source=minival_source,
        minival_images=len(minival),
    )
    report["co-80"] = dict(
        file=os.path.join(root, CO80.json_file),
        images=len(train2014["images"]),
        annotations=0,
        true_annotations=len(train2014.get("annotations", [])),
    )
    report["co-115"] = verify_union(
        root,
        co35_images,
        train2014["images"],
        len(co35_annotations) + len(train2014.get("annotations", [])),
    )
    return report


def verify_union(
    root: str, co35_images: List[dict], co80_images: List[dict], num_annotations: int
) -> dict:
    """Checks that co-35 and co-80 are disjoint and together are co-115, when its file is there.

    Args:
        root: the datasets root.
        co35_images, co80_images: the ``images`` of the two splits.
        num_annotations: annotations of co-35 plus those of co-80's true labels.

    Returns:
        {"verified": bool, ...counts, or "reason" when co-115's file is missing}.

    Raises:
        SystemExit: the splits overlap or differ from co-115 (the message gives examples).
    """
    co115_path = os.path.join(root, CO115_KEYPOINTS)
    if not os.path.isfile(co115_path):
        return {"verified": False, "reason": f"{co115_path} is missing"}
    co35 = {img["id"]: img["file_name"] for img in co35_images}
    co80 = {img["id"]: img["file_name"] for img in co80_images}
    both = sorted(set(co35) & set(co80))
    if both:
        raise SystemExit(
            f"error: co-35 and co-80 share {len(both)} image ids (e.g. {both[:MAX_NAMED_MISSING]})."
        )
    co115_data = read_json(co115_path)
    co115 = {img["id"]: img["file_name"] for img in co115_data["images"]}
    union = {**co35, **co80}
    only_2014 = sorted(set(union) - set(co115))
    only_2017 = sorted(set(co115) - set(union))
    if only_2014 or only_2017:
        raise SystemExit(
            f"error: co-35 + co-80 is not co-115 ({CO115_KEYPOINTS}): "
            f"{len(only_2014)} ids only in 2014 "
            f"(e.g. {only_2014[:MAX_NAMED_MISSING]}), {len(only_2017)} only in 2017 "
            f"(e.g. {only_2017[:MAX_NAMED_MISSING]})."
        )
    renamed = [i for i in sorted(union) if coco_number(union[i]) != coco_number(co115[i])]
    if renamed:
        i = renamed[0]
        raise SystemExit(
            f"error: {len(renamed)} images have the same id but another file in co-115, "
            f"e.g. id {i}: "
            f"{union[i]} (2014) vs {co115[i]} (2017)."
        )
    co115_annotations = len(co115_data.get("annotations", []))
    return {
        "verified": True,
        "images": len(co115),
        "annotations_2017": co115_annotations,
        "annotations_2014": num_annotations,
    }


# ------------------------------------------------------------------------------------------
# --check
# ------------------------------------------------------------------------------------------
def _listed_images(json_path: str, cache: Dict[str, List[str]]) -> List[str]:
    if json_path not in cache:
        data = read_json(json_path)
        cache[json_path] = [img["file_name"] for img in data.get("images", [])]
        cache[json_path + "#annotations"] = len(data.get("annotations", []))
    return cache[json_path]


def check(root: str, names: Sequence[str]) -> Tuple[bool, List[str]]:
    """Verifies the tree for the given splits.

    Args:
        root: the datasets root.
        names: paper names of PAPER_SPLITS and BUILTIN_IMAGE_FOLDERS ("s1m-180").

    Returns:
        (all present, report lines). A line starts with "ok" or "MISSING"; every MISSING line
        says where the file or folder belongs and where it comes from.
    """
    lines, ok, cache = [], True, {}
    unpack = f"unpack it into {os.path.join(root, 'coco')}"
    for split in PAPER_SPLITS:
        if split.paper_name not in names:
            continue
        tag = f"{split.paper_name:<14} {split.dataset_name:<37}"
        json_path = os.path.join(root, split.json_file)
        image_root = os.path.join(root, split.image_root)
        if os.path.isfile(json_path):
            listed = _listed_images(json_path, cache)
            counts = f"{len(listed)} images"
            if split.labeled:
                counts += f", {cache[json_path + '#annotations']} annotations"
            if len(listed) != split.num_images:
                counts += f"; the full split has {split.num_images}"
            lines.append(f"ok       {tag} {json_path} ({counts})")
        else:
            ok, listed = False, None
            if split.json_from == FROM_PREPARE:
                inputs = [VAL2014_KEYPOINTS, TRAIN2014_KEYPOINTS]
                absent = [
                    os.path.join(root, r)
                    for r in inputs
                    if not os.path.isfile(os.path.join(root, r))
                ]
                if not any(os.path.isfile(os.path.join(root, r)) for r in MINIVAL_SOURCES):
                    absent.append(" or ".join(os.path.join(root, r) for r in MINIVAL_SOURCES))
                needs = f"; it needs {', '.join(absent)} first" if absent else ""
                lines.append(
                    f"MISSING  {tag} {json_path}\n"
                    f"           write it with: python datasets/prepare_coco.py{needs}"
                )
            else:
                lines.append(
                    f"MISSING  {tag} {json_path}\n"
                    f"           from COCO's {split.download[-1]}: {unpack}"
                )
        if not os.path.isdir(image_root):
            ok = False
            lines.append(
                f"MISSING  {tag} {image_root}{os.sep}\n"
                f"           the images of COCO's {split.download[0]}: {unpack}"
            )
            continue
        if listed is None:
            lines.append(f"ok       {tag} {image_root}{os.sep} (images not checked: no JSON file)")
            continue
        missing = [f for f in listed if not os.path.isfile(os.path.join(image_root, f))]
        if missing:
            ok = False
            named = ", ".join(os.path.join(image_root, f) for f in missing[:MAX_NAMED_MISSING])
            more = (
                f" and {len(missing) - MAX_NAMED_MISSING} more"
                if len(missing) > MAX_NAMED_MISSING
                else ""
            )
            lines.append(
                f"MISSING  {tag} {len(missing)} of {len(listed)} images listed in "
                f"{split.json_file}: "
                f"{named}{more}\n"
                f"           the images of COCO's {split.download[0]}"
            )
        else:
            lines.append(
                f"ok       {tag} {image_root}{os.sep} (all {len(listed)} listed images present)"
            )
    for folder in BUILTIN_IMAGE_FOLDERS:
        if folder.paper_name not in names:
            continue
        tag = f"{folder.paper_name:<14} {folder.name:<37}"
        path = os.path.join(root, folder.folder)
        found = list_image_files(path) if os.path.isdir(path) else []
        if found:
            lines.append(f"ok       {tag} {path}{os.sep} ({len(found)} JPEG/PNG files)")
        else:
            ok = False
            lines.append(
                f"MISSING  {tag} {path}{os.sep} (no JPEG/PNG file)\n"
                f"           your frames or images, any layout (see datasets/README.md)"
            )
    return ok, lines


def all_names() -> List[str]:
    """The names --splits accepts: the paper's COCO splits and the builtin folders."""
    names = list(OrderedDict.fromkeys(s.paper_name for s in PAPER_SPLITS))
    return names + [f.paper_name for f in BUILTIN_IMAGE_FOLDERS]


def parse_args(argv: Optional[Sequence[str]] = None) -> argparse.Namespace:
    """Parses the command line.

    Args:
        argv: arguments (None reads sys.argv).

    Returns:
        the parsed namespace.
    """
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--root",
        default=None,
        help="datasets root (default: $DETECTRON2_DATASETS, else 'datasets')",
    )
    parser.add_argument("--check", action="store_true", help="verify the tree instead of writing")
    coco_names = [s.paper_name for s in PAPER_SPLITS]
    parser.add_argument(
        "--splits",
        nargs="+",
        default=coco_names,
        choices=all_names(),
        metavar="SPLIT",
        help=f"--check: the splits to verify, of {all_names()} (default: the COCO ones)",
    )
    return parser.parse_args(argv)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the script.

    Args:
        argv: arguments (None reads sys.argv).

    Returns:
        the exit status: 0, or 1 when --check finds something missing.
    """
    args = parse_args(argv)
    root = datasets_root() if args.root is None else args.root
    print(f"datasets root: {os.path.abspath(root)}")
    if args.check:
        ok, lines = check(root, args.splits)
        print("\n".join(lines))
        missing = sum(line.startswith("MISSING") for line in lines)
        print(
            "everything is in place"
            if ok
            else f"{missing} missing; see datasets/README.md for the tree"
        )
        return 0 if ok else 1
    report = prepare(root)
    co35, co80 = report["co-35"], report["co-80"]
    print(
        f"wrote co-35: {co35['file']}: {co35['images']} images, {co35['annotations']} annotations "
        f"(minival: {co35['minival_images']} images of {co35['minival_source']} removed)"
    )
    print(
        f"wrote co-80: {co80['file']}: {co80['images']} images, 0 annotations "
        f"(its {co80['true_annotations']} true annotations stay in {TRAIN2014_KEYPOINTS})"
    )
    union = report["co-115"]
    if union["verified"]:
        print(
            f"verified: co-35 and co-80 are disjoint and together are co-115 "
            f"({union['images']} images, "
            f"same ids and file numbers)"
        )
        if union["annotations_2014"] != union["annotations_2017"]:
            print(
                f"note: their annotations ({union['annotations_2014']}) and co-115's "
                f"({union['annotations_2017']}) differ in number"
            )
    else:
        print(f"not verified against co-115: {union['reason']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
