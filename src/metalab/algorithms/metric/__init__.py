"""Metric-based meta-learning: an embedding in which a new task's classes are compared."""

from .matching import MatchingNet
from .protonet import ProtoNet
from .relation import RelationNet
from .siamese import SiameseNet

__all__ = ["ProtoNet", "MatchingNet", "RelationNet", "SiameseNet"]
