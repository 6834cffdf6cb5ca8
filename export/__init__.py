"""``uvc.export``: masks -> a dense smaller ViT (``materialize``), ONNX, FP16, the fused CPU graph
and TensorRT engines, each validated against PyTorch. Imports the methods' layer and below
(``uvc.methods``, ``uvc.train``, ... ``uvc.errors``); never bench, the API or the CLI.
"""
