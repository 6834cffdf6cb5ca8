"""The ``uvc train`` / ``uvc demo`` job: teacher -> search -> materialize -> finetune.

``uvc.pipeline.config`` holds the run's settings (``TrainConfig``), ``uvc.pipeline.stages`` runs
them. This package sits above the core: it is the one place that joins ``uvc`` training with
``uvc.export`` (materialization).
"""

from uvc.pipeline.config import TrainConfig
from uvc.pipeline.stages import TrainResult, clear_run, demo, evaluate_final, run_stages, train

__all__ = [
    "TrainConfig",
    "TrainResult",
    "clear_run",
    "demo",
    "evaluate_final",
    "run_stages",
    "train",
]
