"""The architecture: the spec, the model it builds, its cost (MACs, params, latency tables),
the structural map, keep-sets, preprocessing. Imports only ``uvc.errors`` and ``uvc._fs``.
"""
