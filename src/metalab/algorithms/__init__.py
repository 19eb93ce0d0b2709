"""Meta-learning algorithms, one file each, all exposing `meta_loss` and `predict`."""
from .base import MetaLearner
from .maml import MAML
from .metasgd import MetaSGD
from .pretrain import Pretrained
from .reptile import Reptile

__all__ = ["MetaLearner", "MAML", "MetaSGD", "Reptile", "Pretrained"]
