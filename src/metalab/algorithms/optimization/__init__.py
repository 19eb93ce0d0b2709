"""Optimization-based meta-learning: an initialisation (and an update rule) adapted by gradient steps."""

from .anil import ANIL
from .lstm_meta import LSTMMetaLearner
from .maml import MAML
from .mamlpp import MAMLpp
from .metasgd import MetaSGD
from .reptile import Reptile

__all__ = ["MAML", "MetaSGD", "Reptile", "ANIL", "MAMLpp", "LSTMMetaLearner"]
