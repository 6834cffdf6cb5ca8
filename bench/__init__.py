"""``uvc.bench``: runners per backend, timing, the benchmark harness, latency tables, reports.
Imports ``uvc.export`` and below; never the API or the CLI (the GPU check driver,
``uvc.bench.gpu_check``, sits above the CLI: it parses its planned commands with it).
"""
