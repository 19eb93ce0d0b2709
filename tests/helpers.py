"""Helpers shared by the tests: paths, and small data sets made in the formats users bring."""

import csv
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent


def write_csv(path, header, rows):
    with open(path, "w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def classification_csv(path, classes=10, per_class=8, seed=0):
    """Columns a, b, c (class-dependent means, in different units), a label, a free-text note."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 3, (classes, 3)) * np.array([1, 100, 0.01])
    rows = [
        [*(centres[k] + rng.normal(0, 0.3, 3) * np.array([1, 100, 0.01])), f"species_{k}"]
        for k in range(classes) for _ in range(per_class)
    ]
    return write_csv(path, ["a", " b", "c ", "label"], rows)  # spaces around names are stripped


def regression_csv(path, tasks=12, per_task=10, seed=0):
    """y = slope * x + offset, one (slope, offset) per task; plus a constant column."""
    rng = np.random.default_rng(seed)
    rows = []
    for t in range(tasks):
        slope, offset = rng.uniform(-2, 2, 2)
        for x in rng.uniform(-3, 3, per_task):
            rows.append([f"shop{t}", x, 7.0, slope * x + offset])
    return write_csv(path, ["shop", "x", "constant", "sales"], rows)
