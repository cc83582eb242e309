"""dataengine: mine (masked region, noun) pairs from image-caption data for mask-adapted CLIP."""

from .clip import register_package_models
from .config import MineConfig
from .pipeline import mine

register_package_models()  # dataengine-tiny / dataengine-world become open_clip names for every client

__all__ = ["MineConfig", "mine"]
