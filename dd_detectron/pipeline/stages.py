"""
The stages of the data distillation pipeline, and how each is run, skipped or resumed.

A stage is one command of a stand-alone tool (tools/train_net.py, tools/annotate_net.py), run
as a child process, so the pipeline does exactly what a user running the tools by hand does.
A finished stage leaves ``stage.json`` in its folder with a fingerprint of everything that
decides its output: the command, the contents of its config files (with their _BASE_ chain),
and the fingerprints of the stages it consumes. A later run skips a stage whose fingerprint
matches, and reruns it (and so everything downstream) otherwise. An interrupted stage resumes:
training with ``--resume`` (detectron2's last checkpoint), annotation from its saved progress.
"""
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import yaml

from ..utils import write_atomic

logger = logging.getLogger(__name__)

__all__ = ["Stage", "StageRunner", "config_files_digest"]

STAGE_RECORD = "stage.json"
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Child output lines worth echoing: detectron2's training ETA lines, inference progress and
# final results, the annotation stage's summary. Everything goes to the stage's log file.
_PROGRESS = re.compile(
    r"eta: |Inference done|Total inference time|copypaste: |Annotation results|"
    r"Traceback|Error|error:"
)


@dataclass
class Stage:
    """One pipeline step.

    Attributes:
        name: unique within a pipeline run, e.g. "seed1/teacher".
        tool: "train_net" or "annotate_net" (a script in tools/).
        args: the tool's arguments (config file, opts, ...).
        output_dir: the folder the stage writes.
        config_files: YAML files whose contents the output depends on.
        depends_on: names of stages whose outputs this one reads.
        work: a size in the stage kind's unit (images seen or images labeled), for the ETA.
        launcher: interpreter arguments that start the tool, e.g. torchrun's module and its
            process count; empty = run the script directly.
    """

    name: str
    tool: str
    args: List[str]
    output_dir: str
    config_files: Sequence[str] = ()
    depends_on: Sequence[str] = ()
    work: float = 1.0
    resume_args: List[str] = field(default_factory=list)
    launcher: List[str] = field(default_factory=list)


def config_files_digest(paths: Sequence[str]) -> str:
    """sha256 over the contents of YAML configs and every file in their _BASE_ chains."""
    digest = hashlib.sha256()
    seen = set()
    todo = list(paths)
    while todo:
        path = os.path.abspath(todo.pop(0))
        if path in seen:
            continue
        seen.add(path)
        with open(path, "rb") as f:
            data = f.read()
        digest.update(path.encode() + b"\0" + data)
        base = (yaml.safe_load(data) or {}).get("_BASE_")
        if base:
            todo.append(os.path.join(os.path.dirname(path), base))
    return digest.hexdigest()


class StageRunner:
    """Runs stages in order, skipping finished ones, with progress and an ETA.

    Args:
        stages: in dependency order.
        launch_args: detectron2 launch arguments passed to every tool (--num-gpus ...).
        python: interpreter for the tools.
    """

    def __init__(self, stages: Sequence[Stage], launch_args: Sequence[str] = (), python: str = sys.executable):
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Duplicate stage names in {names}")
        self.stages = list(stages)
        self.launch_args = list(launch_args)
        self.python = python
        self.fingerprints: Dict[str, str] = {}
        self.wall_times: Dict[str, float] = {}
        self.skipped: List[str] = []
        # Seconds per unit of work, per tool, measured on the stages run so far.
        self._rates: Dict[str, List[float]] = {}

    def fingerprint(self, stage: Stage) -> str:
        blob = json.dumps(
            {
                "tool": stage.tool,
                "launcher": stage.launcher,
                "args": stage.args,
                "configs": config_files_digest(stage.config_files),
                "inputs": [self.fingerprints[d] for d in stage.depends_on],
                "datasets_root": os.path.abspath(os.environ.get("DETECTRON2_DATASETS", "datasets")),
            },
            sort_keys=True,
        )
        return hashlib.sha256(blob.encode()).hexdigest()

    @staticmethod
    def finished_record(stage: Stage) -> Optional[dict]:
        path = os.path.join(stage.output_dir, STAGE_RECORD)
        if not os.path.exists(path):
            return None
        with open(path) as f:
            return json.load(f)

    def _eta(self, index: int) -> Optional[float]:
        total = 0.0
        for stage in self.stages[index:]:
            rates = self._rates.get(stage.tool)
            if not rates:
                return None
            total += stage.work * sum(rates) / len(rates)
        return total

    def run(self) -> Dict[str, float]:
        """Run every stage; return the wall time of each (from its record when skipped)."""
        start = time.perf_counter()
        for index, stage in enumerate(self.stages):
            fp = self.fingerprint(stage)
            self.fingerprints[stage.name] = fp
            record = self.finished_record(stage)
            if record is not None and record.get("fingerprint") == fp:
                logger.info("[%d/%d] %s: done before, skipped", index + 1, len(self.stages), stage.name)
                self.wall_times[stage.name] = record["wall_time_s"]
                self.skipped.append(stage.name)
                continue
            eta = self._eta(index)
            logger.info(
                "[%d/%d] %s: running (elapsed %s, ETA of the remaining stages %s)",
                index + 1,
                len(self.stages),
                stage.name,
                _hms(time.perf_counter() - start),
                _hms(eta) if eta is not None else "known after the first stage of each kind",
            )
            wall = self._run_one(stage, resume=record is None and os.path.isdir(stage.output_dir))
            self.wall_times[stage.name] = wall
            self._rates.setdefault(stage.tool, []).append(wall / max(stage.work, 1e-9))
            write_atomic(
                os.path.join(stage.output_dir, STAGE_RECORD),
                json.dumps({"fingerprint": fp, "wall_time_s": wall, "command": self._command(stage, False)}, indent=1),
            )
        logger.info("Pipeline finished in %s (%d stages skipped)", _hms(time.perf_counter() - start), len(self.skipped))
        return self.wall_times

    def _command(self, stage: Stage, resume: bool) -> List[str]:
        tool = os.path.join(REPO_ROOT, "tools", stage.tool + ".py")
        return [
            self.python, *stage.launcher, tool, *self.launch_args, *(stage.resume_args if resume else []), *stage.args
        ]

    def _run_one(self, stage: Stage, resume: bool) -> float:
        os.makedirs(stage.output_dir, exist_ok=True)
        cmd = self._command(stage, resume)
        log_path = os.path.join(stage.output_dir, "pipeline_stage.log")
        logger.info("  $ %s", " ".join(cmd))
        logger.info("  full log: %s", log_path)
        begin = time.perf_counter()
        with open(log_path, "a") as log:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1)
            for line in proc.stdout:
                log.write(line)
                if _PROGRESS.search(line):
                    sys.stderr.write("  | " + line[-240:] if len(line) > 240 else "  | " + line)
            code = proc.wait()
        if code != 0:
            raise RuntimeError(f"Stage {stage.name} failed (exit {code}); see {log_path}")
        return time.perf_counter() - begin


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
