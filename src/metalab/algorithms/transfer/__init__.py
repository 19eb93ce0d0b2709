"""Transfer-learning baselines: train one model on the meta-train data, fine-tune it on a task."""

from .baseline import Baseline
from .pretrain import Pretrained

__all__ = ["Pretrained", "Baseline"]
