"""Label new images with a trained checkpoint: adapt to a support folder, answer the queries.

`predict(checkpoint, support, queries)` (and `metalab predict`) builds one episode from your files:
the support folder `support/<class>/<a few images>` gives the classes, labelled 0..N-1 in sorted
class-name order, and their examples (support_x of shape (1, n_support, C, S, S)); the query images
(files, or folders searched recursively) give query_x of shape (1, n_query, C, S, S). The learner
adapts to the support set as in meta-testing and each query gets the softmax of its logits (for
Relation Networks, of its relation scores in [0, 1]: flat, only their order is meaningful).

Images are prepared exactly as the checkpoint's training data was (`metalab.data.folder.read_image`
with the image size, channels and inversion recorded in the checkpoint's config): a model trained on
Omniglot (`invert: true`, ink bright) gets black-on-white drawings inverted, as its training PNGs were.
`invert=True/False` (`--invert true|false`) overrides the inversion, with a warning that names the
checkpoint's own setting when they differ (images already white-on-black, say).

Learners whose classifier head has a fixed number of outputs (MAML and its family) need exactly as
many classes as they were trained with; metric-based learners take any number of classes and uneven
numbers of images per class, except Relation Networks, which sum a class's feature maps and so need
the same number of images in every class. Learners that normalise with batch statistics (the MAML
family's Conv-4) normalise the queries together, as in meta-testing: pass the queries in one call.
"""

from __future__ import annotations

import csv
import os
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple, Sequence

import numpy as np
import torch

from .config import IMAGE_BENCHMARKS, Config, ConfigError
from .config_checks import check_steps
from .data.dataset import DataNotFoundError, to_float
from .data.folder import read_class_folders
from .data.images import IMAGE_EXTENSIONS, read_image

if TYPE_CHECKING:
    from .algorithms.base import MetaLearner

__all__ = [
    "Prediction",
    "SupportMismatch",
    "predict",
    "image_learner",
    "check_support",
    "image_invert",
    "class_probabilities",
    "load_queries",
    "write_predictions_csv",
    "format_predictions",
]

PathLike = str | os.PathLike


class Prediction(NamedTuple):
    """One query's answer.

    Attributes:
        query: the query image's path.
        label: the predicted class (a support folder name).
        probabilities: class name -> probability (softmax of the learner's logits), in class order.
    """

    query: str
    label: str
    probabilities: dict[str, float]


def load_queries(
    queries: PathLike | Sequence[PathLike], image_size: int, channels: int, invert: bool
) -> tuple[list[str], torch.Tensor]:
    """Query images from files and folders (searched recursively, sorted), prepared by `read_image`.

    Returns:
        `(names, x)`: the paths as strings and uint8 images of shape (n_query, C, S, S).
    """
    items = [queries] if isinstance(queries, (str, os.PathLike)) else list(queries)
    if not items:
        raise ValueError("no query images given")
    paths: list[Path] = []
    for item in map(Path, items):
        if item.is_dir():
            found = sorted(
                p
                for p in item.rglob("*")
                if p.is_file()
                and p.suffix.lower() in IMAGE_EXTENSIONS
                and not any(part.startswith(".") for part in p.relative_to(item).parts)
            )
            if not found:
                raise DataNotFoundError(f"query folder {item} holds no images")
            paths += found
        elif item.is_file():
            paths.append(item)
        else:
            raise DataNotFoundError(f"query image or folder not found: {item}")
    x = np.stack([read_image(p, image_size, channels, invert) for p in paths])
    return [str(p) for p in paths], torch.from_numpy(x)


class SupportMismatch(ConfigError):
    """A support set that does not fit the learner: not exactly N classes for a fixed N-way head, or
    uneven images per class for a learner that needs equal shots."""


def check_support(c: Config, names: list[str], counts: list[int], *, model: str, support: str | None) -> None:
    """Whether a support set of classes `names` with `counts` images each fits the learner of `c`.

    Args:
        model: how messages name the model (the checkpoint's path).
        support: the support folder's path (`metalab predict`), or None for a support set of uploaded
            images (`metalab serve`).

    Raises:
        SupportMismatch: the wrong number of classes for a fixed head, or uneven shots where the
            learner needs equal ones.
        ConfigError: fewer than 2 classes.
    """
    listed, needs = ", ".join(names), c.spec().needs
    unit, subject, named = (
        ("class folders", "the support folder", support) if support else ("classes", "the support set", "it")
    )
    if needs.fixed_head and len(names) != c.ways:
        raise SupportMismatch(
            f"{model} is a {c.ways}-way {c.algorithm} model: its classifier head has exactly {c.ways} "
            f"outputs, so {subject} needs exactly {c.ways} {unit}; {named} has {len(names)} ({listed})"
        )
    if len(names) < 2:
        raise ConfigError(
            f"{subject}{' ' + support if support else ''} needs at least 2 {unit} to choose between; it "
            f"has {len(names)} ({listed})"
        )
    if needs.equal_shots and len(set(counts)) > 1:
        raise SupportMismatch(
            f"{c.algorithm} needs the same number of support images in every class (relation networks sum "
            f"each class's feature maps); {named} has "
            + ", ".join(f"{n}: {k}" for n, k in zip(names, counts))
        )


def image_learner(checkpoint: PathLike, device: str | None = None) -> tuple[MetaLearner, Config, dict]:
    """The learner, config and state of a checkpoint trained on images, in eval mode, on `device`
    (default: the checkpoint's own `device` setting).

    Raises:
        CheckpointError: the checkpoint is missing or corrupt.
        ConfigError: it was not trained on an image benchmark, or the device is not available.
    """
    from .train import learner_on_device  # the training stack, only when a model is needed

    learner, c, state = learner_on_device(checkpoint, device)
    if c.benchmark not in IMAGE_BENCHMARKS:
        raise ConfigError(
            f"{checkpoint} was trained on {c.benchmark}; predict labels images and needs a checkpoint "
            f"trained on an image benchmark ({', '.join(IMAGE_BENCHMARKS)})"
        )
    learner.eval()
    return learner, c, state


def image_invert(
    c: Config, invert: bool | None, *, model: str, warn: Callable[[str], None] | None = None
) -> bool:
    """The inversion to read images with: `invert` where given, else the checkpoint's (`c.invert`).

    An `invert` that differs from the checkpoint's is used as asked, and `warn` (default:
    `warnings.warn`) gets one line naming the checkpoint's setting.
    """
    trained = bool(c.invert)
    if invert is None or invert == trained:
        return trained
    if not isinstance(invert, bool):
        raise ConfigError(f"invert must be true or false, got {invert!r}")
    how = (
        "its images were stored as 255 - pixel, ink bright, as Omniglot's black-on-white drawings are read"
        if trained
        else "its images were read as they are"
    )
    message = (
        f"{model} was trained with invert: {str(trained).lower()} ({how}); reading images with invert: "
        f"{str(invert).lower()} as asked"
    )
    if warn is None:
        warnings.warn(message, UserWarning, stacklevel=3)
    else:
        warn(message)
    return invert


def class_probabilities(
    learner: MetaLearner,
    support_x: torch.Tensor,
    support_y: torch.Tensor,
    query_x: torch.Tensor,
    steps: int | None = None,
) -> torch.Tensor:
    """Adapt to one support set (uint8 images, labels 0..N-1) and answer its queries (uint8 images).

    Returns:
        float32 of shape (n_query, N): the softmax of the learner's logits.
    """
    kwargs = {} if steps is None else {"steps": steps}
    on = next(learner.parameters()).device
    with torch.no_grad():
        logits = learner.predict(
            to_float(support_x.to(on))[None], support_y.to(on)[None], to_float(query_x.to(on))[None], **kwargs
        )[0]
    return logits.float().softmax(-1).cpu()


def predict(
    checkpoint: PathLike,
    support: PathLike,
    queries: PathLike | Sequence[PathLike],
    *,
    steps: int | None = None,
    device: str | None = None,
    invert: bool | None = None,
    warn: Callable[[str], None] | None = None,
) -> list[Prediction]:
    """Adapt a trained image checkpoint to the classes of `support` and label every query image.

    Args:
        checkpoint: a `checkpoint.pt` trained on an image benchmark (any but sine and csv), or
            `zoo:NAME`, a model of the zoo (`metalab.zoo`).
        support: a folder `support/<class>/<image>`: N class folders, at least one image each.
        queries: an image file or folder, or a list of them (folders are searched recursively).
        steps: inner steps for gradient-based learners (default: the checkpoint's eval_inner_steps).
        device: where to adapt and predict: auto | cpu | cuda | cuda:N | mps (default: the
            checkpoint's `device` key).
        invert: read the images as 255 - pixel (True) or as they are (False) instead of as the
            checkpoint's training images were (default); a different setting is warned about.
        warn: where that warning goes (default: `warnings.warn`).

    Returns:
        One `Prediction(query, label, probabilities)` per query image, in the order read.

    Raises:
        CheckpointError: the checkpoint is missing or corrupt.
        ConfigError: not an image checkpoint, or the support set does not fit the learner (the
            message says what is needed).
        DataNotFoundError, DataIntegrityError: a missing folder or file, an empty class folder, an
            unreadable image (each named).

    Example:
        >>> for query, label, p in predict("runs/a/checkpoint.pt", "support", "queries"):  # doctest: +SKIP
        ...     print(query, label, round(p[label], 3))
    """
    learner, c, _ = image_learner(checkpoint, device)
    check_steps(steps, inner_loop=learner.inner_loop, algorithm=c.algorithm)
    invert = image_invert(c, invert, model=str(checkpoint), warn=warn)
    support_x, support_y, names = read_class_folders(support, c.image_size, c.channels, invert)
    counts = torch.bincount(support_y, minlength=len(names)).tolist()
    check_support(c, names, counts, model=str(checkpoint), support=str(support))
    query_names, query_x = load_queries(queries, c.image_size, c.channels, invert)
    probabilities = class_probabilities(learner, support_x, support_y, query_x, steps)
    return [
        Prediction(q, names[int(p.argmax())], {n: float(v) for n, v in zip(names, p)})
        for q, p in zip(query_names, probabilities)
    ]


def format_predictions(predictions: list[Prediction]) -> str:
    """A table: query, prediction, and the probability of every class."""
    from .experiment import format_table

    classes = list(predictions[0].probabilities)
    rows = [[p.query, p.label, *(f"{p.probabilities[n]:.3f}" for n in classes)] for p in predictions]
    return format_table(rows, ["query", "prediction", *classes])


def write_predictions_csv(predictions: list[Prediction], path: PathLike) -> None:
    """CSV with the columns query, prediction, then one probability column per class (named by it)."""
    classes = list(predictions[0].probabilities) if predictions else []
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["query", "prediction", *classes])
        for p in predictions:
            writer.writerow([p.query, p.label, *(f"{p.probabilities[n]:.6f}" for n in classes)])
