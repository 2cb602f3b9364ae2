"""Training: the run's config (``config``), the loop (``trainer``), CPU data parallelism (``parallel``),
atomic checkpoints (``checkpoint``) and stop signals (``signals``)."""
from .checkpoint import CheckpointError, load_checkpoint, load_model, save_checkpoint
from .config import CPU_RECIPE, GPU_RECIPE, TrainConfig
from .trainer import CHECKPOINT_NAME, Trainer, TrainingError

__all__ = ["Trainer", "TrainingError", "TrainConfig", "CPU_RECIPE", "GPU_RECIPE", "CHECKPOINT_NAME",
           "save_checkpoint", "load_checkpoint", "load_model", "CheckpointError"]
