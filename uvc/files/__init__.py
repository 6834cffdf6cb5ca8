"""Files on disk: checkpoints, run folders, weights files, model sources (names and paths ->
models). Imports ``uvc.arch`` and below.
"""
