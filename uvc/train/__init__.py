"""Training loops and their parts: data, loaders, distillation, fine-tuning, teachers,
schedules, optimizer groups, AMP, DDP, run logs, accuracy. Imports ``uvc.adapters`` and below.
"""
