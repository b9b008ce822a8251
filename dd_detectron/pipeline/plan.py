"""
Which stages a pipeline config asks for: per seed, teacher -> annotate -> student, then for
DD.PIPELINE.ROUNDS > 1 further rounds (the student of round r labels again as the teacher of
round r + 1), plus the ablations of DD.PIPELINE.ABLATIONS (round 1 only). Every stage is a
command line of a stand-alone tool.

Each stage writes ``<DD.PIPELINE.OUTPUT_DIR>/seed<k>/<row>``; the row names below are also what
the report reads.
"""

import os
from typing import List, Tuple
from urllib.parse import urlparse

from detectron2.config import get_cfg

from ..annotation import OUTPUT_JSON
from ..config import add_dd_config, num_views
from ..modeling.heads import Heads
from .stages import Stage

__all__ = [
    "ABLATIONS",
    "annotate_launcher",
    "TEACHER",
    "LABELS_MULTIVIEW",
    "STUDENT",
    "LABELS_SINGLEVIEW",
    "STUDENT_SINGLEVIEW",
    "STUDENT_FINETUNE",
    "LABELS_SHIFTED",
    "STUDENT_SHIFTED",
    "ORACLE",
    "ROUND_PREFIX",
    "round_row",
    "round_rows",
    "build_stages",
    "check_student_heads",
    "load_stage_config",
    "resolve_config_path",
]

ABLATIONS = ("single_view", "single_view_labels", "finetune", "shifted", "oracle")

# Rows: the folder of a stage within its seed's folder.
TEACHER = "teacher"
LABELS_MULTIVIEW = "labels_multiview"
STUDENT = "student"
LABELS_SINGLEVIEW = "labels_singleview"
STUDENT_SINGLEVIEW = "student_singleview"
STUDENT_FINETUNE = "student_finetune"
LABELS_SHIFTED = "labels_shifted"
STUDENT_SHIFTED = "student_shifted"
ORACLE = "oracle"
# Rows of round r >= 2: "round<r>_" + the round-1 row (round 1 keeps the rows above, so outputs
# of single-round runs stay valid when ROUNDS grows).
ROUND_PREFIX = "round"


def round_row(row: str, round_index: int) -> str:
    """The row of ``row`` (LABELS_MULTIVIEW or STUDENT) in round ``round_index`` (from 1)."""
    return row if round_index == 1 else f"{ROUND_PREFIX}{round_index}_{row}"


def round_rows(round_index: int) -> Tuple[str, str, str]:
    """(teacher, labels, student) rows of a round: round r's teacher is round r - 1's
    student."""
    teacher = TEACHER if round_index == 1 else round_row(STUDENT, round_index - 1)
    return teacher, round_row(LABELS_MULTIVIEW, round_index), round_row(STUDENT, round_index)


def load_stage_config(config_file: str, opts=()):
    """A config with dd-detectron's keys from a YAML file and KEY VALUE pairs (the pipeline's
    own config, and the config a stage's tool will see: used to size the stages for the ETA)."""
    cfg = get_cfg()
    add_dd_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(list(opts))
    return cfg


def _tuple(*names: str) -> str:
    return repr(tuple(names))


def resolve_config_path(path: str, config_dir: str) -> str:
    """A stage config path of DD.PIPELINE, read as detectron2 reads ``_BASE_``: relative to the
    folder of the pipeline config (``config_dir``); absolute paths and "" are kept."""
    if not path or os.path.isabs(path):
        return path
    return os.path.normpath(os.path.join(config_dir, path))


def annotate_launcher(
    processes: int, num_machines: int = 1, machine_rank: int = 0, dist_url: str = "auto"
):
    """torchrun's arguments for an annotation stage of ``processes`` processes per machine.

    One machine: a standalone job. Several: ONE job over all of them (each machine runs this
    with its own node rank), meeting at machine 0's address and port from --dist-url, so the
    images are sharded over every process of every machine, none labeled twice.

    Returns:
        (launcher, node_args): the interpreter arguments that are the same on every machine,
        and those that differ between them (the node rank; kept out of the stage fingerprint).
    """
    if processes <= 1:
        return [], []
    run = ["-m", "torch.distributed.run"]
    if num_machines == 1:
        return [*run, "--standalone", f"--nproc_per_node={processes}"], []
    url = urlparse(dist_url)
    if url.scheme != "tcp" or not url.hostname or not url.port:
        raise ValueError(
            f"DD.PIPELINE.ANNOTATE_PROCESSES = {processes} on {num_machines} machines starts one "
            f"torchrun job over all machines: give --dist-url tcp://HOST:PORT (machine 0's address "
            f"and a free port), got {dist_url!r}."
        )
    launcher = [
        *run,
        f"--nnodes={num_machines}",
        f"--nproc_per_node={processes}",
        f"--master_addr={url.hostname}",
        f"--master_port={url.port}",
    ]
    return launcher, [f"--node_rank={machine_rank}"]


def check_student_heads(teacher_cfg, student_cfg, rounds: int = 1) -> None:
    """Check that the student can learn from the teacher's labels, and, with several rounds,
    that its checkpoints load into the teacher config's model.

    Raises:
        ValueError: the student has a head the teacher's labels cannot train (a mask or keypoint
            head of a teacher without it); a mask student without INPUT.MASK_FORMAT "bitmask"
            (the labels' masks are RLE); with rounds > 1, the two configs' MODEL nodes differ
            (MODEL.WEIGHTS aside). The message names the keys.
    """
    missing = set(Heads.from_cfg(student_cfg).iou_types) - set(
        Heads.from_cfg(teacher_cfg).iou_types
    )
    if missing:
        keys = {"segm": "MODEL.MASK_ON", "keypoints": "MODEL.KEYPOINT_ON"}
        raise ValueError(
            f"DD.PIPELINE.STUDENT_CONFIG asks for {sorted(missing)} labels "
            f"({', '.join(keys[m] for m in sorted(missing))} True), which the teacher "
            "(DD.PIPELINE.TEACHER_CONFIG) cannot label: give both configs the same heads."
        )
    if student_cfg.MODEL.MASK_ON and student_cfg.INPUT.MASK_FORMAT != "bitmask":
        # Found here, not at the student's first batch after hours of teacher and labels.
        raise ValueError(
            "DD.PIPELINE.STUDENT_CONFIG: a mask student trains on the teacher's RLE masks, which "
            'detectron2 reads only with INPUT.MASK_FORMAT "bitmask"; got '
            f"{student_cfg.INPUT.MASK_FORMAT!r}. Set INPUT.MASK_FORMAT bitmask in the student "
            "config (polygons train as bitmasks too)."
        )
    if rounds > 1:
        teacher_model, student_model = teacher_cfg.MODEL.clone(), student_cfg.MODEL.clone()
        teacher_model.WEIGHTS = student_model.WEIGHTS = ""
        if teacher_model != student_model:
            differ = sorted(
                k
                for k in set(teacher_model) | set(student_model)
                if teacher_model.get(k) != student_model.get(k)
            )
            raise ValueError(
                f"DD.PIPELINE.ROUNDS = {rounds}: a student labels the next round with the "
                "teacher config's model, but DD.PIPELINE.STUDENT_CONFIG's MODEL differs from "
                f"DD.PIPELINE.TEACHER_CONFIG's in MODEL.{', MODEL.'.join(differ)}: give both the "
                "same model (MODEL.WEIGHTS aside), or use DD.PIPELINE.ROUNDS 1."
            )


def build_stages(
    cfg,
    config_dir: str = "",
    num_gpus: int = 1,
    num_machines: int = 1,
    machine_rank: int = 0,
    dist_url: str = "auto",
) -> List[Stage]:
    """The stages of a pipeline config, in the order they must run.

    Args:
        cfg: a config with the DD.PIPELINE node filled in.
        config_dir: the folder of the pipeline config file; DD.PIPELINE's stage configs are
            relative to it.
        num_gpus, num_machines, machine_rank, dist_url: the launch arguments the stages run
            with (tools/run_pipeline.py's).

    Returns:
        the stages; names are "seed<k>/<row>" with rows teacher, labels_multiview, student,
        round<r>_labels_multiview and round<r>_student for rounds r = 2..ROUNDS, and, with
        ablations (for the seeds of ABLATION_SEEDS), labels_singleview,
        student_singleview, student_finetune, labels_shifted, student_shifted, oracle.
    """
    p = cfg.DD.PIPELINE
    unknown = set(p.ABLATIONS) - set(ABLATIONS)
    if unknown:
        raise ValueError(f"DD.PIPELINE.ABLATIONS: unknown {sorted(unknown)}; allowed: {ABLATIONS}")
    configs = {
        key: resolve_config_path(p.get(key), config_dir)
        for key in ("TEACHER_CONFIG", "STUDENT_CONFIG", "ORACLE_CONFIG")
    }
    for key in ("TEACHER_CONFIG", "STUDENT_CONFIG"):
        if not configs[key] or not os.path.isfile(configs[key]):
            raise ValueError(f"DD.PIPELINE.{key}: config file {configs[key]!r} not found")
    if "oracle" in p.ABLATIONS and not os.path.isfile(configs["ORACLE_CONFIG"]):
        raise ValueError(
            f"DD.PIPELINE.ORACLE_CONFIG: config file {configs['ORACLE_CONFIG']!r} not found "
            "(oracle ablation)"
        )
    teacher_config, student_config = configs["TEACHER_CONFIG"], configs["STUDENT_CONFIG"]
    if not p.SEEDS:
        raise ValueError("DD.PIPELINE.SEEDS is empty")
    ablation_seeds = tuple(p.ABLATION_SEEDS) or tuple(p.SEEDS[:1])
    stray = [s for s in ablation_seeds if s not in tuple(p.SEEDS)]
    if stray:
        raise ValueError(
            f"DD.PIPELINE.ABLATION_SEEDS: {stray} not in DD.PIPELINE.SEEDS {tuple(p.SEEDS)}"
        )
    if p.ROUNDS < 1:
        raise ValueError(f"DD.PIPELINE.ROUNDS must be >= 1, got {p.ROUNDS}")
    common = list(p.STAGE_OPTS)
    teacher_cfg = load_stage_config(teacher_config, common)
    # A broken student config fails now, not in an hour.
    student_cfg = load_stage_config(student_config, common)
    check_student_heads(teacher_cfg, student_cfg, p.ROUNDS)
    views = num_views(teacher_cfg)
    if p.ANNOTATE_PROCESSES < 0:
        raise ValueError(f"DD.PIPELINE.ANNOTATE_PROCESSES must be >= 0, got {p.ANNOTATE_PROCESSES}")
    if p.PARALLEL_STAGES > 1 and (num_gpus > 1 or num_machines > 1):
        # Two multi-process stages at once would share the GPUs and the --dist-url port.
        raise ValueError(
            f"DD.PIPELINE.PARALLEL_STAGES = {p.PARALLEL_STAGES} runs stages side by side, which is "
            f"for CPUs: with --num-gpus {num_gpus} and --num-machines {num_machines}, every stage "
            "uses all GPUs and the --dist-url port. Use DD.PIPELINE.PARALLEL_STAGES 1."
        )
    launcher, node_args = annotate_launcher(
        p.ANNOTATE_PROCESSES, num_machines, machine_rank, dist_url
    )

    def train_work(c):
        return float(c.SOLVER.MAX_ITER * c.SOLVER.IMS_PER_BATCH)

    stages: List[Stage] = []
    for seed in p.SEEDS:
        root = os.path.join(p.OUTPUT_DIR, f"seed{seed}")

        def path(row: str) -> str:
            return os.path.join(root, row)

        def name(row: str) -> str:
            return f"seed{seed}/{row}"

        teacher_weights = os.path.join(path(TEACHER), "model_final.pth")

        def train(row, config, opts=(), depends=()):
            c = load_stage_config(config, common + list(opts))
            stages.append(
                Stage(
                    name=name(row),
                    tool="train_net",
                    args=[
                        "--config-file",
                        config,
                        *common,
                        *opts,
                        "OUTPUT_DIR",
                        path(row),
                        "SEED",
                        str(seed),
                    ],
                    output_dir=path(row),
                    config_files=[config],
                    depends_on=[name(d) for d in depends],
                    work=train_work(c),
                    resume_args=["--resume"],
                )
            )

        def annotate(row, dataset, truth, multiview, weights=teacher_weights, depends=TEACHER):
            args = ["--config-file", teacher_config, "--output", path(row)]
            if truth:
                args += ["--truth", truth]
            args += [
                *common,
                "MODEL.WEIGHTS",
                weights,
                "TEST.AUG.ENABLED",
                str(multiview),
                "DD.ANNOTATE.DATASETS",
                _tuple(dataset),
                "SEED",
                str(seed),
            ]
            stages.append(
                Stage(
                    name=name(row),
                    tool="annotate_net",
                    args=args,
                    output_dir=path(row),
                    config_files=[teacher_config],
                    depends_on=[name(depends)],
                    work=float(views if multiview else 1),
                    launcher=launcher,
                    node_args=node_args,
                )
            )

        def student(row, labels_row, opts=()):
            generated = os.path.join(path(labels_row), OUTPUT_JSON)
            train(
                row,
                student_config,
                ["DD.STUDENT.GENERATED_DATASETS", _tuple(generated), *opts],
                depends=[labels_row],  # and so, through the labels, on the teacher
            )

        train(TEACHER, teacher_config)
        annotate(LABELS_MULTIVIEW, p.UNLABELED_DATASET, p.UNLABELED_TRUTH, True)
        student(STUDENT, LABELS_MULTIVIEW)
        for r in range(2, p.ROUNDS + 1):
            # The teacher config's model and views, with the weights of the previous student;
            # a new student from its usual init (not from the previous student).
            teacher_row, labels_row, student_row = round_rows(r)
            annotate(
                labels_row,
                p.UNLABELED_DATASET,
                p.UNLABELED_TRUTH,
                True,
                weights=os.path.join(path(teacher_row), "model_final.pth"),
                depends=teacher_row,
            )
            student(student_row, labels_row)
        ablations = p.ABLATIONS if seed in ablation_seeds else ()
        if "single_view" in ablations or "single_view_labels" in ablations:
            annotate(LABELS_SINGLEVIEW, p.UNLABELED_DATASET, p.UNLABELED_TRUTH, False)
        if "single_view" in ablations:
            student(STUDENT_SINGLEVIEW, LABELS_SINGLEVIEW)
        if "finetune" in ablations:
            student(
                STUDENT_FINETUNE,
                LABELS_MULTIVIEW,
                ["DD.STUDENT.INIT", "teacher", "DD.STUDENT.TEACHER_WEIGHTS", teacher_weights],
            )
        if "shifted" in ablations:
            annotate(LABELS_SHIFTED, p.SHIFTED_DATASET, p.SHIFTED_TRUTH, True)
            student(STUDENT_SHIFTED, LABELS_SHIFTED)
        if "oracle" in ablations:
            train(ORACLE, configs["ORACLE_CONFIG"])
    return stages
