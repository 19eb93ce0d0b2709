"""metalab: meta-learning ("learning to learn") on PyTorch."""
from .algorithms import MAML, MetaLearner, MetaSGD, Pretrained, Reptile
from .tasks import ClassSplits, EpisodeSampler, SineTasks, Task, TaskBatch, split_classes

__version__ = "0.1.0"

__all__ = [
    "MAML",
    "MetaSGD",
    "Reptile",
    "Pretrained",
    "MetaLearner",
    "Task",
    "TaskBatch",
    "EpisodeSampler",
    "SineTasks",
    "ClassSplits",
    "split_classes",
    "__version__",
]
