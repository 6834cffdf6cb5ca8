"""NViT: global Hessian-aware structural pruning (saliency, chunks, ranking). Imports
``uvc.methods.common`` and below; never another method.
"""
