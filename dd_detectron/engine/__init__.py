from .trainer import DDTrainer

__all__ = ["DDTrainer"]
