#!/usr/bin/env python
"""Generate the embedded synthetic person-keypoint splits ahead of time.

Training and evaluation generate a missing split on first use anyway; this script does it up
front (e.g. before a multi-process run) and can force a regeneration.

    python datasets/prepare_synthetic.py          # all splits, under $DETECTRON2_DATASETS
    python datasets/prepare_synthetic.py --root /tmp/d --splits synthetic_kp_labeled --force
"""

import argparse
import logging
import time

from dd_detectron.data.datasets import datasets_root
from dd_detectron.data.synthetic import (
    SYNTHETIC_SPLITS,
    generate_split,
    is_split_complete,
    split_files,
)

logger = logging.getLogger("prepare_synthetic")


def parse_args(argv=None) -> argparse.Namespace:
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
    names = [s.name for s in SYNTHETIC_SPLITS]
    parser.add_argument(
        "--splits",
        nargs="+",
        default=names,
        choices=names,
        help="splits to generate (default: all)",
    )
    parser.add_argument("--force", action="store_true", help="regenerate even if up to date")
    return parser.parse_args(argv)


def main(argv=None) -> None:
    """Generates the requested splits.

    Args:
        argv: arguments (None reads sys.argv).
    """
    args = parse_args(argv)
    root = datasets_root() if args.root is None else args.root
    specs = {spec.name: spec for spec in SYNTHETIC_SPLITS}
    for name in args.splits:
        spec = specs[name]
        files = split_files(spec, root)
        if not args.force and is_split_complete(spec, root):
            logger.info("%s is up to date: %s", name, files.json_file)
            continue
        start = time.perf_counter()
        generate_split(spec, root)
        logger.info(
            "%s: %d images in %.1f s -> %s",
            name,
            spec.num_images,
            time.perf_counter() - start,
            files.json_file,
        )


if __name__ == "__main__":
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s"
    )
    main()
