"""What every compression method shares: the ``Method`` protocol, the registry, the search
settings, importance scores, the resource model, hard widths and the masked distillation step.
Imports ``uvc.train`` and below; never a method.
"""
