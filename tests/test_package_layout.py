"""Which subpackage of dd_detectron imports which: the model facts (modeling/) and the evaluator
stand below the stages that use them."""

import ast
import collections
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "dd_detectron"


def imported_subpackages():
    """{subpackage: the other subpackages its modules import}, from the source."""
    graph = collections.defaultdict(set)
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(PACKAGE)
        if len(rel.parts) == 1:
            continue  # the package's own __init__ and config.py
        for node in ast.walk(ast.parse(path.read_text())):
            if not isinstance(node, ast.ImportFrom):
                continue
            if node.level == 0:
                parts = (node.module or "").split(".")
                if parts[0] != "dd_detectron" or len(parts) < 2:
                    continue
                target = parts[1]
            else:
                base = list(rel.parts[:-1])[: len(rel.parts) - node.level]
                full = base + (node.module.split(".") if node.module else [])
                target = full[0] if full else ""
            if target and target != rel.parts[0]:
                graph[rel.parts[0]].add(target)
    return graph


def test_the_stages_import_the_model_facts_not_the_reverse():
    graph = imported_subpackages()
    assert "annotation" not in graph["evaluation"], graph["evaluation"]
    assert not graph["modeling"] & {"annotation", "engine", "evaluation", "pipeline"}
    assert "modeling" in graph["evaluation"] and "modeling" in graph["annotation"]
