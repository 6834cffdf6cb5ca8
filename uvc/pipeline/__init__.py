"""The ``uvc train`` / ``uvc demo`` job: teacher -> search -> materialize -> finetune.

``uvc.settings`` holds the run's settings (``TrainConfig``), ``uvc.pipeline.stages`` runs
them. It sits above the API and may import every layer below it; only the CLI imports it.
"""

from uvc.pipeline.stages import TrainResult, clear_run, demo, evaluate_final, run_stages, train
from uvc.settings import TrainConfig

__all__ = [
    "TrainConfig",
    "TrainResult",
    "clear_run",
    "demo",
    "evaluate_final",
    "run_stages",
    "train",
]
