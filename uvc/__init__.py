"""uvc: compress Vision Transformers (UVC, NViT) and carry them to deployment."""

from uvc.errors import UvcError
from uvc.spec import BlockSpec, ViTSpec

__version__ = "0.1.0"
__all__ = ["BlockSpec", "UvcError", "ViTSpec", "__version__"]
