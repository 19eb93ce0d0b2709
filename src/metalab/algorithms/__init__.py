"""Meta-learning algorithms: one file each, grouped by family, each declaring its spec.

Importing this package registers the built-in algorithms (`spec.register`); `specs()` lists them,
with any registered by user plugins.

    optimization/  maml (and fomaml), metasgd, reptile, anil, mamlpp, lstm_meta
    metric/        protonet, matching, relation, siamese
    model/         mann, metanet
    transfer/      pretrain, baseline (and baseline_pp)
    ../rl/         maml_rl, pretrained_rl, random_rl (reinforcement learning)
"""

from .base import MetaLearner
from .metric import MatchingNet, ProtoNet, RelationNet, SiameseNet
from .model import MANN, MetaNet
from .optimization import ANIL, MAML, LSTMMetaLearner, MAMLpp, MetaSGD, Reptile
from .spec import (
    AlgorithmSpec,
    BuildContext,
    Needs,
    NoOptions,
    OptionError,
    Options,
    algorithm_names,
    get_spec,
    option,
    register,
    specs,
)
from .transfer import Baseline, Pretrained

__all__ = [
    "MetaLearner",
    "MAML",
    "MetaSGD",
    "Reptile",
    "ANIL",
    "MAMLpp",
    "LSTMMetaLearner",
    "ProtoNet",
    "MatchingNet",
    "RelationNet",
    "SiameseNet",
    "MANN",
    "MetaNet",
    "Pretrained",
    "Baseline",
    "AlgorithmSpec",
    "BuildContext",
    "Needs",
    "NoOptions",
    "OptionError",
    "Options",
    "algorithm_names",
    "get_spec",
    "option",
    "register",
    "specs",
]

# The RL learners live in metalab.rl beside their environments; importing it registers them.
from ..rl import learner as _rl_learners  # noqa: E402,F401
