"""Model-based meta-learning: networks whose state (a memory, fast weights) takes in a task."""

from .mann import MANN
from .metanet import MetaNet

__all__ = ["MANN", "MetaNet"]
