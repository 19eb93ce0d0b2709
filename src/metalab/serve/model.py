"""The served model and its episodes, without the web framework: what `metalab serve` does per request.

A `ServedModel` holds one learner (eval mode) loaded once from a checkpoint. An episode is a support
set: its classes (labelled 0..N-1 in sorted name order, as `metalab predict` labels its class
folders) and their images, decoded and prepared by `metalab.data.images.decode_image` with the
checkpoint's image size, channels and inversion (or the inversion asked for), exactly as `metalab
predict` reads files. Episodes
are immutable once made and live in an `EpisodeStore` (least recently used dropped beyond its
capacity, dropped after `ttl` seconds unused). Predicting adapts the learner to the episode's support
set under one lock: MAML-family learners adapt through `torch.func.functional_call`, which swaps the
shared module's parameters while it runs, so two adaptations at once would see each other's weights.
Image decoding runs outside the lock.
"""

from __future__ import annotations

import secrets
import threading
import time
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch

from ..config import ConfigError
from ..config_checks import check_steps
from ..data.dataset import DataIntegrityError
from ..data.images import ImageTooLargeError, decode_image
from ..predict import (
    SupportMismatch,
    check_support,
    class_probabilities,
    image_invert,
    image_learner,
)

__all__ = ["ApiError", "Episode", "EpisodeStore", "Limits", "ServedModel"]

# An uploaded image: (a name for messages, its encoded bytes).
Upload = tuple[str, bytes]


class ApiError(Exception):
    """A request the server refuses: an HTTP status and one clear message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass(frozen=True)
class Limits:
    """What one request may hold, and how many episodes are kept for how long.

    Attributes:
        max_request_bytes: the whole request body (413 beyond it).
        max_image_bytes: one encoded image (413).
        max_image_pixels: one image's width x height, read from its header before decoding (413).
        max_classes: classes of a support set (413).
        max_examples_per_class: images of one class (413).
        max_queries: query images of one prediction request (413).
        max_steps: inner steps a request may ask a gradient-based learner for (422).
        max_episodes: episodes kept; the least recently used is dropped beyond it.
        episode_ttl: seconds an episode is kept after its last use.
    """

    max_request_bytes: int = 32 * 2**20
    max_image_bytes: int = 4 * 2**20
    max_image_pixels: int = 4096 * 4096
    max_classes: int = 50
    max_examples_per_class: int = 20
    max_queries: int = 100
    max_steps: int = 100
    max_episodes: int = 256
    episode_ttl: float = 3600.0

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True, eq=False)
class Episode:
    """A support set ready for prediction: uint8 images (M, C, S, S), labels (M,), sorted class names."""

    id: str
    classes: tuple[str, ...]
    support_x: torch.Tensor
    support_y: torch.Tensor
    counts: tuple[int, ...]

    def summary(self, ttl: float) -> dict:
        return {
            "id": self.id,
            "classes": [{"name": n, "examples": k} for n, k in zip(self.classes, self.counts)],
            "expires_after_idle_seconds": ttl,
        }


class EpisodeStore:
    """Episodes by id, thread-safe: at most `capacity` (least recently used dropped first), each
    dropped `ttl` seconds after its last use."""

    def __init__(self, capacity: int, ttl: float, clock: Callable[[], float] = time.monotonic) -> None:
        if capacity < 1 or ttl <= 0:
            raise ValueError(f"episode capacity must be >= 1 and ttl > 0, got {capacity} and {ttl}")
        self.capacity, self.ttl, self.clock = capacity, ttl, clock
        self._items: OrderedDict[str, tuple[Episode, float]] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        while self._items:
            key, (_, used) = next(iter(self._items.items()))
            if now - used < self.ttl:
                break
            del self._items[key]

    def add(self, episode: Episode) -> None:
        with self._lock:
            now = self.clock()
            self._expire(now)
            self._items[episode.id] = (episode, now)
            while len(self._items) > self.capacity:
                self._items.popitem(last=False)

    def get(self, episode_id: str) -> Episode:
        """The episode, marked as just used; `ApiError(404)` when unknown, expired or dropped."""
        with self._lock:
            now = self.clock()
            self._expire(now)
            if episode_id not in self._items:
                raise ApiError(
                    404,
                    f"no episode {episode_id!r}: unknown, deleted, or expired (kept "
                    f"{self.ttl:g} s after its last use, at most {self.capacity} episodes)",
                )
            episode = self._items.pop(episode_id)[0]
            self._items[episode_id] = (episode, now)  # most recently used last
            return episode

    def delete(self, episode_id: str) -> None:
        with self._lock:
            self._expire(self.clock())
            if self._items.pop(episode_id, None) is None:
                raise ApiError(404, f"no episode {episode_id!r}: unknown, deleted, or expired")

    def __len__(self) -> int:
        with self._lock:
            self._expire(self.clock())
            return len(self._items)


class ServedModel:
    """One checkpoint's learner, loaded once, and the episodes made for it."""

    def __init__(
        self,
        checkpoint: str | Path,
        limits: Limits | None = None,
        *,
        invert: bool | None = None,
        warn: Callable[[str], None] | None = None,
    ) -> None:
        """`invert` overrides the checkpoint's image inversion (see `metalab.predict.image_invert`)."""
        self.checkpoint, self.limits = str(checkpoint), limits or Limits()
        self.learner, self.config, state = image_learner(checkpoint)
        self.invert = image_invert(self.config, invert, model=self.checkpoint, warn=warn)
        self.iteration = int(state.get("iteration", 0))
        self.episodes = EpisodeStore(self.limits.max_episodes, self.limits.episode_ttl)
        self._model_lock = threading.Lock()

    def describe(self) -> dict:
        """What `GET /model` answers: the learner, its input and how images are prepared for it."""
        c, spec, learner = self.config, self.config.spec(), self.learner
        return {
            "checkpoint": self.checkpoint,
            "algorithm": c.algorithm,
            "family": spec.family,
            "summary": spec.summary,
            "benchmark": c.benchmark,
            "iteration": self.iteration,
            "backbone": c.backbone,
            "parameters": sum(p.numel() for p in learner.parameters()),
            "input_shape": [c.channels, c.image_size, c.image_size],
            "image": {
                "image_size": c.image_size,
                "channels": c.channels,
                "invert": self.invert,
                "trained_invert": bool(c.invert),
            },
            "classes": {
                "fixed_ways": c.ways if spec.needs.fixed_head else None,
                "trained_ways": c.ways,
                "equal_shots": spec.needs.equal_shots,
            },
            "inner_steps": getattr(learner, "eval_inner_steps", None) if learner.inner_loop else None,
            "limits": self.limits.to_dict(),
        }

    def _image(self, upload: Upload) -> np.ndarray:
        name, data = upload
        if len(data) > self.limits.max_image_bytes:
            raise ApiError(
                413, f"image {name} is {len(data):,} bytes, over the limit of {self.limits.max_image_bytes:,}"
            )
        c = self.config
        try:
            return decode_image(
                data,
                c.image_size,
                c.channels,
                self.invert,
                name=name,
                max_pixels=self.limits.max_image_pixels,
            )
        except ImageTooLargeError as e:
            raise ApiError(413, str(e)) from None
        except DataIntegrityError as e:
            raise ApiError(422, str(e)) from None

    def create_episode(self, classes: Sequence[tuple[str, Sequence[Upload]]]) -> Episode:
        """Decode a support set `[(class name, [(image name, bytes), ...]), ...]` and keep it.

        Raises:
            ApiError: 413 over a limit, 422 a bad class name, an empty class or an undecodable image,
                409 a support set the learner cannot take (fixed head: not N classes; equal shots needed).
        """
        lim = self.limits
        if len(classes) > lim.max_classes:
            raise ApiError(413, f"{len(classes)} classes, over the limit of {lim.max_classes}")
        names = [name for name, _ in classes]
        for name, images in classes:
            if not isinstance(name, str) or not name.strip():
                raise ApiError(422, "every class needs a non-empty name")
            if not images:
                raise ApiError(422, f"class {name!r} has no images")
            if len(images) > lim.max_examples_per_class:
                raise ApiError(
                    413,
                    f"class {name!r} has {len(images)} images, over the limit of "
                    f"{lim.max_examples_per_class}",
                )
        if len(set(names)) != len(names):
            raise ApiError(422, "class names must be distinct: " + ", ".join(names))
        ordered = sorted(classes, key=lambda item: item[0])
        counts = tuple(len(images) for _, images in ordered)
        try:
            check_support(
                self.config, [n for n, _ in ordered], list(counts), model=self.checkpoint, support=None
            )
        except SupportMismatch as e:
            raise ApiError(409, str(e)) from None
        except ConfigError as e:
            raise ApiError(422, str(e)) from None
        x = np.stack([self._image(upload) for _, images in ordered for upload in images])
        episode = Episode(
            id=secrets.token_urlsafe(12),
            classes=tuple(n for n, _ in ordered),
            support_x=torch.from_numpy(x),
            support_y=torch.arange(len(ordered)).repeat_interleave(torch.tensor(counts)),
            counts=counts,
        )
        self.episodes.add(episode)
        return episode

    def predict(self, episode_id: str, queries: Sequence[Upload], steps: int | None = None) -> dict:
        """Adapt to the episode's support set and label the queries (all in one batch, as in
        meta-testing: learners that normalise with batch statistics normalise them together).

        Returns:
            `{"episode", "classes", "predictions": [{"query", "label", "probabilities", "ranked"}]}`,
            `ranked` being the classes from most to least probable.
        """
        episode = self.episodes.get(episode_id)
        if not queries:
            raise ApiError(422, "no query images given")
        if len(queries) > self.limits.max_queries:
            raise ApiError(413, f"{len(queries)} query images, over the limit of {self.limits.max_queries}")
        try:
            check_steps(steps, inner_loop=self.learner.inner_loop, algorithm=self.config.algorithm)
        except ConfigError as e:
            raise ApiError(422, str(e)) from None
        if steps is not None and steps > self.limits.max_steps:
            raise ApiError(422, f"steps must be <= {self.limits.max_steps}, got {steps}")
        query_x = torch.from_numpy(np.stack([self._image(q) for q in queries]))
        with self._model_lock:
            probabilities = class_probabilities(
                self.learner, episode.support_x, episode.support_y, query_x, steps
            )
        predictions = []
        for (name, _), p in zip(queries, probabilities.tolist()):
            order = sorted(range(len(p)), key=lambda k: -p[k])
            predictions.append(
                {
                    "query": name,
                    "label": episode.classes[order[0]],
                    "probabilities": dict(zip(episode.classes, p)),
                    "ranked": [{"class": episode.classes[k], "probability": p[k]} for k in order],
                }
            )
        return {"episode": episode.id, "classes": list(episode.classes), "predictions": predictions}
