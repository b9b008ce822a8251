"""Where a student's weights come from: MODEL.WEIGHTS (the paper) or, explicitly, the teacher."""

import os
from typing import Optional

__all__ = ["apply_student_init"]

INIT_CHOICES = ("weights", "teacher")


def _same_file(a: str, b: str) -> bool:
    return os.path.realpath(os.path.expanduser(a)) == os.path.realpath(os.path.expanduser(b))


def apply_student_init(cfg) -> Optional[str]:
    """Check DD.STUDENT.INIT and set MODEL.WEIGHTS from it, before the config is frozen.

    - "weights" (default): the student starts from MODEL.WEIGHTS (ImageNet, or "" for random
      init), as in the paper. Pointing MODEL.WEIGHTS at DD.STUDENT.TEACHER_WEIGHTS is an error,
      so a student never starts from the teacher by accident.
    - "teacher": the student fine-tunes from DD.STUDENT.TEACHER_WEIGHTS (the paper's
      ablation): MODEL.WEIGHTS is set to it, so the dumped config says what was loaded.

    Args:
        cfg: an unfrozen config with the DD keys; modified in place.

    Returns:
        a line saying where the student starts, to log once loggers exist; None when the
        config is not a student (no DD.STUDENT.GENERATED_DATASETS) and INIT is "weights".
    """
    init = cfg.DD.STUDENT.INIT
    teacher = cfg.DD.STUDENT.TEACHER_WEIGHTS
    if init not in INIT_CHOICES:
        raise ValueError(f"DD.STUDENT.INIT must be one of {INIT_CHOICES}, got {init!r}")
    if init == "teacher":
        if not teacher:
            raise ValueError(
                "DD.STUDENT.INIT is 'teacher' but DD.STUDENT.TEACHER_WEIGHTS is empty: give the "
                "teacher checkpoint to fine-tune from."
            )
        cfg.MODEL.WEIGHTS = teacher
        return (
            f"Student init: fine-tuning from the teacher checkpoint {teacher} "
            "(DD.STUDENT.INIT='teacher', the paper's ablation; "
            "the paper's student starts from ImageNet)."
        )
    if teacher and cfg.MODEL.WEIGHTS and _same_file(cfg.MODEL.WEIGHTS, teacher):
        raise ValueError(
            f"MODEL.WEIGHTS is the teacher checkpoint ({teacher}, DD.STUDENT.TEACHER_WEIGHTS) but "
            "DD.STUDENT.INIT is 'weights'. The paper's student starts from ImageNet weights: set "
            "MODEL.WEIGHTS to them, or set DD.STUDENT.INIT teacher to fine-tune from the teacher."
        )
    if not cfg.DD.STUDENT.GENERATED_DATASETS:
        return None
    start = cfg.MODEL.WEIGHTS or "random initialisation (MODEL.WEIGHTS is empty)"
    return f"Student init: MODEL.WEIGHTS = {start} (DD.STUDENT.INIT='weights'), not the teacher."
