"""Training: the loop (``trainer``), CPU data parallelism (``parallel``), atomic checkpoints
(``checkpoint``) and stop signals (``signals``)."""
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .trainer import CHECKPOINT_NAME, Trainer, TrainingError

__all__ = ["Trainer", "TrainingError", "CHECKPOINT_NAME", "save_checkpoint", "load_checkpoint", "load_model",
           "CheckpointError"]
