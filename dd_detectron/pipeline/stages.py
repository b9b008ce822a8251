"""
The stages of the data distillation pipeline, and how each is run, skipped or resumed.

A stage is one command of a stand-alone tool (tools/train_net.py, tools/annotate_net.py), run
as a child process, so the pipeline does exactly what a user running the tools by hand does.
A finished stage leaves ``stage.json`` in its folder with a fingerprint of everything that
decides its output: the command, the contents of its config files (with their _BASE_ chain),
and the fingerprints of the stages it consumes. A later run skips a stage whose fingerprint
matches, and reruns it (and so everything downstream) otherwise. An interrupted stage resumes:
training with ``--resume`` (detectron2's last checkpoint), annotation from its saved progress.

On several machines every machine runs the same pipeline (its own --machine-rank) over a shared
output folder; each stage is one job over all machines. Machine 0 alone writes the stage
records; the others wait for them.
"""

import concurrent.futures
import hashlib
import json
import logging
import os
import re
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

import yaml

from ..data.datasets import datasets_root
from ..utils import write_atomic

logger = logging.getLogger(__name__)

__all__ = ["Stage", "StageRunner", "config_files_digest"]

STAGE_RECORD = "stage.json"

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
        node_args: launcher arguments that differ between the machines of one job (torchrun's
            --node_rank); not part of the fingerprint, which all machines share.
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
    node_args: List[str] = field(default_factory=list)


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
    """Runs stages in dependency order, skipping finished ones, with progress and an ETA.

    Args:
        stages: in dependency order (a stage only depends on stages listed before it).
        tools_dir: the folder of the stand-alone tools (``<tool>.py``); tools/run_pipeline.py
            passes its own folder.
        launch_args: detectron2 launch arguments passed to every tool (--num-gpus ...).
        python: interpreter for the tools.
        parallel: how many stages may run at once (a stage starts as soon as the stages it reads
            have finished, in list order). Meant for CPUs: each of N parallel stages gets
            cpu_count / N threads (OMP_NUM_THREADS, unless the caller set it), because on a small
            CPU two one-thread trainings get more done than one two-thread training.
        machine_rank: this machine's --machine-rank. Machine 0 writes the stage records; the
            others wait for machine 0's record of each stage they ran.
    """

    # How often, and how long, a machine other than 0 looks for machine 0's record of a stage
    # both ran (machine 0 writes it once its own processes have exited, and a shared
    # filesystem may show it late).
    RECORD_POLL_S = 5.0
    RECORD_WAIT_S = 3600.0

    def __init__(
        self,
        stages: Sequence[Stage],
        tools_dir: str,
        launch_args: Sequence[str] = (),
        python: str = sys.executable,
        parallel: int = 1,
        machine_rank: int = 0,
    ):
        names = [s.name for s in stages]
        if len(set(names)) != len(names):
            raise ValueError(f"Duplicate stage names in {names}")
        for stage in stages:
            missing = [d for d in stage.depends_on if d not in names[: names.index(stage.name)]]
            if missing:
                raise ValueError(
                    f"Stage {stage.name} depends on {missing}, which are not listed before it"
                )
        if parallel < 1:
            raise ValueError(f"parallel must be >= 1, got {parallel}")
        self.stages = list(stages)
        self.tools_dir = tools_dir
        self.launch_args = list(launch_args)
        self.python = python
        self.parallel = parallel
        self.machine_rank = machine_rank
        self.fingerprints: Dict[str, str] = {}
        self.wall_times: Dict[str, float] = {}
        self.skipped: List[str] = []
        # Seconds per unit of work, per tool, measured on the stages run so far.
        self._rates: Dict[str, List[float]] = {}
        self._procs: Dict[str, subprocess.Popen] = {}
        self._echo_lock = threading.Lock()

    def fingerprint(self, stage: Stage) -> str:
        blob = json.dumps(
            {
                "tool": stage.tool,
                "launcher": stage.launcher,
                "args": stage.args,
                "configs": config_files_digest(stage.config_files),
                "inputs": [self.fingerprints[d] for d in stage.depends_on],
                "datasets_root": os.path.abspath(datasets_root()),
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

    def _eta(self, remaining: Sequence[Stage]) -> Optional[float]:
        total = 0.0
        for stage in remaining:
            rates = self._rates.get(stage.tool)
            if not rates:
                return None
            total += stage.work * sum(rates) / len(rates)
        return total / self.parallel

    def child_env(self) -> Dict[str, str]:
        """The tools' environment: ours, plus a per-stage thread count when stages run in
        parallel."""
        env = dict(os.environ)
        if self.parallel > 1 and "OMP_NUM_THREADS" not in env:
            env["OMP_NUM_THREADS"] = str(max(1, (os.cpu_count() or 1) // self.parallel))
        return env

    def run(self) -> Dict[str, float]:
        """Run every stage; return the wall time of each (from its record when skipped)."""
        start = time.perf_counter()
        todo: List[Stage] = []
        for index, stage in enumerate(self.stages):
            fp = self.fingerprint(stage)
            self.fingerprints[stage.name] = fp
            record = self.finished_record(stage)
            if record is not None and record.get("fingerprint") == fp:
                logger.info(
                    "[%d/%d] %s: done before, skipped", index + 1, len(self.stages), stage.name
                )
                self.wall_times[stage.name] = record["wall_time_s"]
                self.skipped.append(stage.name)
            else:
                todo.append(stage)
        done = set(self.skipped)
        position = {s.name: i + 1 for i, s in enumerate(self.stages)}
        running: Dict[concurrent.futures.Future, Stage] = {}
        with concurrent.futures.ThreadPoolExecutor(max_workers=self.parallel) as pool:
            try:
                while todo or running:
                    for stage in [s for s in todo if all(d in done for d in s.depends_on)]:
                        if len(running) >= self.parallel:
                            break
                        todo.remove(stage)
                        eta = self._eta([stage, *todo, *running.values()])
                        logger.info(
                            "[%d/%d] %s: running (elapsed %s, ETA of the remaining stages %s)",
                            position[stage.name],
                            len(self.stages),
                            stage.name,
                            _hms(time.perf_counter() - start),
                            (
                                _hms(eta)
                                if eta is not None
                                else "known after the first stage of each kind"
                            ),
                        )
                        record = self.finished_record(stage)
                        cmd = self._command(
                            stage, resume=record is None and os.path.isdir(stage.output_dir)
                        )
                        with self._echo_lock:
                            logger.info("  $ %s", " ".join(cmd))
                            logger.info("  full log: %s", self._log_path(stage))
                        running[pool.submit(self._run_one, stage, cmd)] = stage
                    finished, _ = concurrent.futures.wait(
                        running, return_when=concurrent.futures.FIRST_COMPLETED
                    )
                    for future in finished:
                        stage = running.pop(future)
                        wall = future.result()  # a failed stage raises here
                        self._finish(stage, wall)
                        done.add(stage.name)
            except BaseException:
                # Stop the other stages; each resumes on the next run (checkpoints, progress files).
                for proc in list(self._procs.values()):
                    proc.terminate()
                raise
        logger.info(
            "Pipeline finished in %s (%d stages skipped)",
            _hms(time.perf_counter() - start),
            len(self.skipped),
        )
        return self.wall_times

    @staticmethod
    def _sleep(seconds: float) -> None:
        time.sleep(seconds)

    def _wait_for_record(self, stage: Stage) -> None:
        """On a machine other than 0: wait until machine 0 has recorded the stage as finished."""
        for _ in range(int(self.RECORD_WAIT_S / self.RECORD_POLL_S) + 1):
            record = self.finished_record(stage)
            if record is not None and record.get("fingerprint") == self.fingerprints[stage.name]:
                return
            self._sleep(self.RECORD_POLL_S)
        raise RuntimeError(
            f"Stage {stage.name} finished on machine {self.machine_rank}, but machine 0 has not "
            f"recorded it in {os.path.join(stage.output_dir, STAGE_RECORD)} after "
            f"{self.RECORD_WAIT_S:.0f} s: is the output folder shared by all machines, and did "
            "machine 0 fail?"
        )

    def _finish(self, stage: Stage, wall: float) -> None:
        self.wall_times[stage.name] = wall
        self._rates.setdefault(stage.tool, []).append(wall / max(stage.work, 1e-9))
        if self.machine_rank != 0:
            self._wait_for_record(stage)
            return
        record = {
            "fingerprint": self.fingerprints[stage.name],
            "wall_time_s": wall,
            "command": self._command(stage, False),
            "parallel_stages": self.parallel,
            "omp_num_threads": self.child_env().get("OMP_NUM_THREADS"),
        }
        write_atomic(os.path.join(stage.output_dir, STAGE_RECORD), json.dumps(record, indent=1))

    def _command(self, stage: Stage, resume: bool) -> List[str]:
        tool = os.path.join(self.tools_dir, stage.tool + ".py")
        return [
            self.python,
            *stage.launcher,
            *stage.node_args,
            tool,
            *self.launch_args,
            *(stage.resume_args if resume else []),
            *stage.args,
        ]

    def _log_path(self, stage: Stage) -> str:
        # One log per machine: machines share the output folder.
        machine = f".machine{self.machine_rank}" if self.machine_rank else ""
        return os.path.join(stage.output_dir, f"pipeline_stage{machine}.log")

    def _run_one(self, stage: Stage, cmd: List[str]) -> float:
        os.makedirs(stage.output_dir, exist_ok=True)
        log_path = self._log_path(stage)
        # With stages in parallel, echoed lines say which stage they come from.
        prefix = f"  | {stage.name} | " if self.parallel > 1 else "  | "
        begin = time.perf_counter()
        with open(log_path, "a") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                bufsize=1,
                env=self.child_env(),
            )
            self._procs[stage.name] = proc
            try:
                for line in proc.stdout:
                    log.write(line)
                    if _PROGRESS.search(line):
                        with self._echo_lock:
                            sys.stderr.write(prefix + (line[-240:] if len(line) > 240 else line))
                code = proc.wait()
            finally:
                self._procs.pop(stage.name, None)
        if code != 0:
            raise RuntimeError(f"Stage {stage.name} failed (exit {code}); see {log_path}")
        return time.perf_counter() - begin


def _hms(seconds: float) -> str:
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"
