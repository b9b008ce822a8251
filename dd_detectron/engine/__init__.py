from .launch import PROCESS_GROUP_TIMEOUT, launch_or_join
from .source_counting import SourceCountingLoader
from .student_init import apply_student_init
from .trainer import DDTrainer

__all__ = [
    "DDTrainer",
    "SourceCountingLoader",
    "apply_student_init",
    "launch_or_join",
    "PROCESS_GROUP_TIMEOUT",
]
