"""metalab: meta-learning ("learning to learn") on PyTorch."""

from .algorithms import (
    ANIL,
    MAML,
    MANN,
    Baseline,
    LSTMMetaLearner,
    MAMLpp,
    MatchingNet,
    MetaLearner,
    MetaNet,
    MetaSGD,
    Pretrained,
    ProtoNet,
    RelationNet,
    Reptile,
    SiameseNet,
)
from .predict import Prediction, predict  # the function `metalab.predict(checkpoint, support, queries)`
from .tasks import ClassSplits, EpisodeSampler, SineTasks, Task, TaskBatch, split_classes

__version__ = "0.1.0"

__all__ = [
    "MAML",
    "MetaSGD",
    "Reptile",
    "ANIL",
    "MAMLpp",
    "Pretrained",
    "ProtoNet",
    "MatchingNet",
    "RelationNet",
    "SiameseNet",
    "MetaNet",
    "Baseline",
    "MANN",
    "LSTMMetaLearner",
    "MetaLearner",
    "Task",
    "TaskBatch",
    "EpisodeSampler",
    "SineTasks",
    "ClassSplits",
    "split_classes",
    "predict",
    "Prediction",
    "__version__",
]
