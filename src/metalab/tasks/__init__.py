"""Few-shot tasks: the named containers, episodic sampling, class splits and task families."""

from .batches import ClassBatchSampler
from .episode import Task, TaskBatch
from .sampler import EpisodeSampler, class_index
from .sine import SineTasks
from .splits import ClassSplits, split_classes

__all__ = [
    "Task",
    "TaskBatch",
    "EpisodeSampler",
    "class_index",
    "SineTasks",
    "ClassSplits",
    "split_classes",
    "ClassBatchSampler",
]
