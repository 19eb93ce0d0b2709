"""Your own table: a CSV file as few-shot classification episodes or as regression tasks.

- Classification: a label column names each row's class; the classes are split into meta-train /
  val / test classes (seeded shuffle) and episodes are drawn by `EpisodeSampler` over the float
  feature rows, exactly as for images.
- Regression: a target column holds the value to predict and a task column groups the rows into
  tasks (e.g. one task per patient, per sensor, per shop); the tasks are split into meta-train / val
  / test tasks, and `RowTasks.sample(T)` draws T tasks with K support and Q query rows each.

The features are every column but the label (or target and task) columns unless named, read as
floats and standardised with the mean and standard deviation of the meta-train rows (a constant
column is left centred), so that an MLP sees inputs of unit scale whatever their units.
Only the standard library's `csv` module and torch are used.
"""

from __future__ import annotations

import csv
import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import torch
from torch import Tensor

from ..tasks.episode import TaskBatch
from ..tasks.sampler import EpisodeSampler, class_index
from ..tasks.splits import ClassSplits, split_classes
from .dataset import DataIntegrityError, DataNotFoundError
from .folder import default_split_size

__all__ = ["RowTasks", "TabularData", "load_csv", "read_csv"]

_FLOAT32_MAX = float(torch.finfo(torch.float32).max)


def read_csv(path: str | os.PathLike) -> tuple[list[str], list[list[str]], list[int]]:
    """The header (names stripped of surrounding spaces), the rows as strings and each row's line number.

    Raises:
        DataNotFoundError: the file is missing.
        DataIntegrityError: no header or no rows, a repeated column name, or a row with the wrong
            number of fields (its line is named).
    """
    path = Path(path)
    if path.is_dir():
        raise DataNotFoundError(f"{path} is a folder; give the CSV file")
    if not path.is_file():
        raise DataNotFoundError(f"CSV file not found: {path}")
    with path.open(newline="", encoding="utf-8-sig") as f:  # -sig: drop the BOM spreadsheet tools write
        reader = csv.reader(f, strict=True)  # strict: a quote left open is an error, not the rest of the file
        rows, lines = [], []
        try:  # csv.Error: e.g. a field longer than the csv module's limit (131,072 characters)
            header = [name.strip() for name in next(reader, [])]
            for row in reader:
                if not row or all(not cell.strip() for cell in row):
                    continue  # blank lines
                if len(row) != len(header):
                    raise DataIntegrityError(
                        f"{path}, line {reader.line_num}: {len(row)} fields, but the header has {len(header)}"
                    )
                rows.append(row)
                lines.append(reader.line_num)
        except csv.Error as e:
            raise DataIntegrityError(f"{path}, line {reader.line_num}: {e}") from None
        except UnicodeDecodeError as e:
            raise DataIntegrityError(
                f"{path} is not UTF-8 text ({e.reason}): save it as a UTF-8 CSV"
            ) from None
    if not header or not rows:
        raise DataIntegrityError(
            f"{path}: no {'header' if not header else 'data rows'}; expected a header line naming the "
            "columns, then one row per example"
        )
    repeated = sorted({n for n in header if header.count(n) > 1})
    if repeated:
        raise DataIntegrityError(
            f"{path}: column name(s) {', '.join(map(repr, repeated))} appear more than once in the header"
        )
    return header, rows, lines


def _column(path: Path, header: list[str], name: str, role: str) -> int:
    if name not in header:
        raise DataIntegrityError(
            f"{path} has no {role} column {name!r}; its columns are: {', '.join(header)}"
        )
    return header.index(name)


def _numbers(
    path: Path, header: list[str], rows: list[list[str]], lines: list[int], columns: list[int]
) -> Tensor:
    """The given columns as float32 of shape (rows, columns); the first bad cell is named."""
    out = torch.empty(len(rows), len(columns), dtype=torch.float32)
    for i, row in enumerate(rows):
        for j, c in enumerate(columns):
            try:
                value = float(row[c])
            except ValueError:
                value = math.nan
            if not math.isfinite(value):
                raise DataIntegrityError(
                    f"{path}, line {lines[i]}, column {header[c]!r}: {row[c]!r} is not a finite number"
                )
            if abs(value) > _FLOAT32_MAX:
                raise DataIntegrityError(
                    f"{path}, line {lines[i]}, column {header[c]!r}: {row[c]!r} is beyond the float32 range "
                    f"(+/-{_FLOAT32_MAX:.4g}) the features are kept in"
                )
            out[i, j] = value
    return out


@dataclass(frozen=True, eq=False)
class TabularData:
    """Rows of a CSV held in memory, grouped into classes or tasks, split by group.

    Attributes:
        x: standardised features, float32 of shape (M, F).
        y: class ids of shape (M,) (classification) or targets of shape (M, 1) (regression).
        groups: the class (or task) id of every row, of shape (M,); indexes `group_names`.
        group_names: the label (or task) values, sorted.
        splits: group ids of meta-train / val / test, pairwise disjoint.
        feature_names: the feature columns, in the order of x's columns.
        kind: "classification" or "regression".
        mean, std: the meta-train statistics the features were standardised with, of shape (F,).
    """

    x: Tensor
    y: Tensor
    groups: Tensor
    group_names: list[str]
    splits: ClassSplits
    feature_names: list[str]
    kind: str
    mean: Tensor
    std: Tensor

    def sampler(self, split_name: str, ways: int, shots: int, queries: int, seed: int = 0):
        """An `EpisodeSampler` (classification; N-way) or `RowTasks` (regression; `ways` unused)
        over the groups of one split ("train", "val" or "test")."""
        if split_name not in ClassSplits._fields:
            raise ValueError(f"split_name must be one of {ClassSplits._fields}, got {split_name!r}")
        groups = getattr(self.splits, split_name)
        if self.kind == "classification":
            return EpisodeSampler(
                self.x,
                self.y,
                ways=ways,
                shots=shots,
                queries=queries,
                classes=groups,
                seed=seed,
                class_names=self.group_names,
            )
        return RowTasks(
            self.x,
            self.y,
            self.groups,
            shots=shots,
            queries=queries,
            tasks=groups,
            seed=seed,
            task_names=self.group_names,
        )


class RowTasks:
    """Regression tasks made of table rows: each task is one group of rows (one task-column value).

    `sample(T)` draws T tasks uniformly (independently) from the allowed ones and, from each,
    K + Q distinct rows uniformly at random: support_x (T, K, F), support_y (T, K, 1), query_x
    (T, Q, F), query_y (T, Q, 1). Seeded by its own generator, with `get_state` / `set_state`.

    Args:
        x: features of shape (M, F); y: targets of shape (M, 1); groups: task id of every row (M,).
        shots, queries: K and Q.
        tasks: the task ids this source may draw (default: all).
        seed: seeds the source's generator.
        task_names: names for error messages, indexed by task id.

    Raises:
        ValueError: a task has fewer than K + Q rows (it is named).
    """

    def __init__(
        self,
        x: Tensor,
        y: Tensor,
        groups: Tensor,
        *,
        shots: int,
        queries: int,
        tasks: Tensor | None = None,
        seed: int = 0,
        task_names: Sequence[str] | None = None,
    ) -> None:
        for name, value in (("shots", shots), ("queries", queries)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {value!r}")
        tasks = torch.unique(groups) if tasks is None else torch.as_tensor(tasks, dtype=torch.long)
        if tasks.numel() == 0:
            raise ValueError("no tasks to draw from")
        self.table, self.counts = class_index(groups, tasks)
        need = shots + queries
        short = torch.nonzero(self.counts < need).flatten()
        if short.numel():
            t = int(tasks[short[0]])
            name = repr(task_names[t]) if task_names is not None else str(t)
            raise ValueError(
                f"task {name} has {int(self.counts[short[0]])} rows, fewer than shots + queries = {shots} + "
                f"{queries} = {need} "
                f"({short.numel()} task(s) too small)"
            )
        self.x, self.y, self.tasks = x, y, tasks
        self.shots, self.queries = shots, queries
        self.generator = torch.Generator().manual_seed(seed)

    def sample(self, num_tasks: int) -> TaskBatch:
        g, need = self.generator, self.shots + self.queries
        picked = torch.randint(self.tasks.numel(), (num_tasks,), generator=g)
        counts = self.counts[picked]
        # As in EpisodeSampler: random keys, slots past a task's row count sort last.
        keys = torch.rand(num_tasks, self.table.shape[1], generator=g)
        keys.masked_fill_(torch.arange(self.table.shape[1]) >= counts[:, None], 2.0)
        rows = self.table[picked[:, None], keys.argsort(dim=1)[:, :need]]  # (T, K+Q)
        k = self.shots
        return TaskBatch(self.x[rows[:, :k]], self.y[rows[:, :k]], self.x[rows[:, k:]], self.y[rows[:, k:]])

    def get_state(self) -> Tensor:
        return self.generator.get_state()

    def set_state(self, state: Tensor) -> None:
        self.generator.set_state(state)


def load_csv(
    path: str | os.PathLike,
    *,
    label: str | None = None,
    target: str | None = None,
    task: str | None = None,
    features: Sequence[str] | None = None,
    val_classes: int | None = None,
    test_classes: int | None = None,
    seed: int = 0,
    min_classes: int = 1,
) -> TabularData:
    """A CSV file as few-shot classification data (`label`) or regression tasks (`target` + `task`).

    Args:
        path: the CSV file, with a header line.
        label: classification: the class column.
        target, task: regression: the value column and the column grouping rows into tasks.
        features: the feature columns (default: every other column).
        val_classes, test_classes: classes (regression: tasks) held out for meta-val and meta-test
            (default: a fifth of them each, at least `min_classes`).
        seed: the seed of the split's shuffle.
        min_classes: the least number a defaulted val/test split gets (the test ways).

    Returns:
        `TabularData`.

    Raises:
        DataNotFoundError: the file is missing.
        DataIntegrityError: a missing column (named, with the columns there are), a non-numeric
            feature or target (row and column named), a malformed file.
        ValueError: too few classes or tasks for the split.

    Example:
        >>> data = load_csv("iris.csv", label="species", val_classes=0, test_classes=1)  # doctest: +SKIP
    """
    path = Path(path)
    if (label is None) == (target is None) or (target is None) != (task is None):
        raise ValueError("give either label (classification) or both target and task (regression)")
    header, rows, lines = read_csv(path)
    roles = {"label": label} if label is not None else {"target": target, "task": task}
    special = [_column(path, header, name, role) for role, name in roles.items()]
    names = list(features) if features else [h for h in header if header.index(h) not in special]
    if not names:
        raise DataIntegrityError(
            f"{path} has no feature columns besides {', '.join(map(repr, roles.values()))}"
        )
    for name in names:
        if name in roles.values():
            raise ValueError(
                f"column {name!r} cannot be both a feature and the "
                f"{next(r for r, n in roles.items() if n == name)} column"
            )
    x = _numbers(path, header, rows, lines, [_column(path, header, n, "feature") for n in names])
    group_values = [row[special[0] if label is not None else special[1]].strip() for row in rows]
    group_names = sorted(set(group_values))
    ids = {name: i for i, name in enumerate(group_names)}
    groups = torch.tensor([ids[v] for v in group_values], dtype=torch.long)
    n = len(group_names)
    val = default_split_size(n, min_classes) if val_classes is None else val_classes
    test = default_split_size(n, min_classes) if test_classes is None else test_classes
    unit = "classes" if label is not None else "tasks"
    if val + test >= n:
        raise ValueError(
            f"{path} has {n} {unit}: too few to hold out {val} for meta-validation and {test} for meta-test "
            "and keep some for meta-training; set val_classes / test_classes"
        )
    splits = split_classes(n, val, test, seed=seed)
    train_rows = torch.isin(groups, splits.train)
    mean, std = x[train_rows].mean(0), x[train_rows].std(0, unbiased=False)
    std = torch.where(std > 0, std, torch.ones_like(std))
    x = (x - mean) / std
    if label is not None:
        return TabularData(x, groups, groups, group_names, splits, names, "classification", mean, std)
    y = _numbers(path, header, rows, lines, [special[0]])
    return TabularData(x, y, groups, group_names, splits, names, "regression", mean, std)
