from .plan import build_stages
from .report import build_report, write_report
from .stages import Stage, StageRunner

__all__ = ["Stage", "StageRunner", "build_stages", "build_report", "write_report"]
