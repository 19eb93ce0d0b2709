"""Meta-learning algorithms, one file each, all exposing `meta_loss` and `predict`."""
from .anil import ANIL
from .base import MetaLearner
from .finetune import Baseline
from .lstm_meta import LSTMMetaLearner
from .maml import MAML
from .mann import MANN
from .mamlpp import MAMLpp
from .matching import MatchingNet
from .metanet import MetaNet
from .metasgd import MetaSGD
from .pretrain import Pretrained
from .protonet import ProtoNet
from .relation import RelationNet
from .reptile import Reptile
from .siamese import SiameseNet

__all__ = ["MetaLearner", "MAML", "MetaSGD", "Reptile", "ANIL", "MAMLpp", "Pretrained", "ProtoNet", "MatchingNet", "RelationNet", "SiameseNet", "MetaNet", "Baseline", "MANN", "LSTMMetaLearner"]
