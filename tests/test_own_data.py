"""Your own data: image folders and CSV files as benchmarks, and `metalab predict` on your images.

Everything runs on tiny generated folders and tables, offline, except the acceptance test at the end,
which meta-trains on the real Omniglot and labels PNGs of new characters written to disk.
"""

import csv
import io
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import metalab
from helpers import classification_csv, regression_csv, run, write_csv
from metalab import run as train_module
from metalab.config import Config
from metalab.data import DataIntegrityError, DataNotFoundError, load_csv, load_image_folder, read_image
from metalab.data.omniglot.archive import _decode_png
from metalab.train import learner_from_checkpoint, train

QUIET = ["--quiet", "--no-eval", "--threads", "1", "--val-every", "0"]


pytestmark = pytest.mark.usefixtures("one_thread")  # see conftest.py


def make_folder(root, classes=8, per_class=6, rgb=False, seed=0, size=(20, 16)):
    """Classes of distinct random 4x4 patterns (blown up, with noise), PNG and JPEG alternately."""
    rng = np.random.default_rng(seed)
    root = Path(root)
    for c in range(classes):
        pattern = rng.integers(0, 256, (4, 4, 3) if rgb else (4, 4))
        folder = root / f"class{c:02d}"
        folder.mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(pattern + rng.normal(0, 12, pattern.shape), 0, 255).astype(np.uint8)
            image = Image.fromarray(pixels, "RGB" if rgb else "L").resize(size, Image.NEAREST)
            image.save(folder / (f"{i}.png" if i % 2 == 0 else f"{i}.jpg"))
    return root


# ---------------------------------------------------------------------------------------------
# The image-folder source
# ---------------------------------------------------------------------------------------------


def test_folder_loads_greyscale_and_rgb_as_uint8_split_by_class(tmp_path):
    root = make_folder(tmp_path / "rgb", classes=10, per_class=4, rgb=True)
    (root / "class03" / "notes.txt").write_text("not an image: ignored")
    (root / "README.md").write_text("stray files beside the class folders are ignored")
    for channels in (1, 3):
        data = load_image_folder(
            root, image_size=24, channels=channels, val_classes=2, test_classes=3, seed=0
        )
        assert data.x.dtype == torch.uint8 and tuple(data.x.shape) == (40, channels, 24, 24)
        assert data.image_shape == (channels, 24, 24)
        assert data.class_names == [f"class{c:02d}" for c in range(10)]
        assert data.y.tolist() == [c for c in range(10) for _ in range(4)]
        parts = [set(s.tolist()) for s in data.splits]
        assert [len(p) for p in parts] == [5, 2, 3] and set.union(*parts) == set(range(10))
        batch = data.sampler("train", ways=3, shots=1, queries=2, seed=0).sample(4)
        assert (
            tuple(batch.support_x.shape) == (4, 3, channels, 24, 24)
            and batch.support_x.dtype == torch.float32
        )
        assert 0.0 <= float(batch.query_x.min()) and float(batch.query_x.max()) <= 1.0
    again = load_image_folder(root, image_size=24, channels=3, val_classes=2, test_classes=3, seed=0)
    other = load_image_folder(root, image_size=24, channels=3, val_classes=2, test_classes=3, seed=1)
    assert all(torch.equal(a, b) for a, b in zip(data.splits, again.splits))
    assert not all(torch.equal(a, b) for a, b in zip(data.splits, other.splits))
    default = load_image_folder(root, min_classes=3)  # a fifth of 10 classes, but at least 3
    assert [len(s) for s in default.splits] == [4, 3, 3]


def test_read_image_conventions(tmp_path):
    """Stored as read (no inversion) unless asked; transparency on white; colour to grey or RGB."""
    Image.new("L", (30, 10), 100).save(tmp_path / "grey.png")
    assert np.all(read_image(tmp_path / "grey.png", 8) == 100)
    assert np.all(read_image(tmp_path / "grey.png", 8, invert=True) == 155)
    Image.new("RGBA", (12, 12), (0, 0, 0, 0)).save(tmp_path / "clear.png")
    assert np.all(read_image(tmp_path / "clear.png", 8, channels=3) == 255)
    Image.new("RGB", (12, 12), (255, 0, 0)).save(tmp_path / "red.jpg", quality=100)
    red = read_image(tmp_path / "red.jpg", 8, channels=3)
    assert red.shape == (3, 8, 8) and red[0].min() > 240 and red[1].max() < 15
    assert read_image(tmp_path / "red.jpg", 8).shape == (1, 8, 8)


def test_an_omniglot_png_is_prepared_exactly_as_the_omniglot_loader_does(tmp_path):
    """A checkpoint trained on Omniglot records invert: true; `read_image` then matches the loader."""
    rng = np.random.default_rng(0)
    strokes = rng.random((105, 105)) > 0.1  # 1-bit, mostly white (True) with black ink
    buffer = io.BytesIO()
    Image.fromarray(strokes).convert("1").save(buffer, format="PNG")
    (tmp_path / "drawing.png").write_bytes(buffer.getvalue())
    expected = _decode_png(buffer.getvalue(), 28)
    assert np.array_equal(read_image(tmp_path / "drawing.png", 28, invert=True)[0], expected)
    assert Config(benchmark="omniglot").resolved().invert is True
    assert Config(benchmark="folder").resolved().invert is False


def test_folder_errors_name_the_culprit(tmp_path):
    with pytest.raises(DataNotFoundError, match="image folder not found: .*nowhere"):
        load_image_folder(tmp_path / "nowhere")
    (tmp_path / "flat").mkdir()
    Image.new("L", (8, 8)).save(tmp_path / "flat" / "a.png")
    with pytest.raises(DataNotFoundError, match="has no class folders"):
        load_image_folder(tmp_path / "flat")
    root = make_folder(tmp_path / "d", classes=4, per_class=3)
    (root / "class01" / "0.png").write_bytes(b"\x89PNG\r\n\x1a\n this is not a PNG")
    with pytest.raises(DataIntegrityError, match=r"cannot read image .*class01/0\.png"):
        load_image_folder(root)
    shutil.rmtree(root / "class01")
    (root / "empty_class").mkdir()
    (root / "empty_class" / "notes.txt").write_text("no images here")
    with pytest.raises(DataIntegrityError, match=r"class folder .*empty_class has no images"):
        load_image_folder(root)
    shutil.rmtree(root / "empty_class")
    with pytest.raises(
        ValueError, match="has 3 classes: too few to hold out 1 for meta-validation and 2 for meta-test"
    ):
        load_image_folder(root, val_classes=1, test_classes=2)


def test_folder_benchmark_checks_splits_and_class_sizes_before_training(tmp_path, capsys):
    root = make_folder(tmp_path / "d", classes=9, per_class=3)
    base = [
        "train",
        "--benchmark",
        "folder",
        "--data-dir",
        root,
        "--algorithm",
        "protonet",
        "--ways",
        "3",
        "--shots",
        "1",
    ]
    code, _, err = run(capsys, *base, "--queries", "3", *QUIET)  # 1 + 3 > 3 images per class
    assert (
        code == 2
        and "meta-train split: class" in err
        and "has 3 examples, fewer than shots + queries = 1 + 3 = 4" in err
    )
    code, _, err = run(capsys, *base, "--queries", "2", "--test-classes", "2", *QUIET)
    assert code == 2 and "config key 'test_classes' (2) must be at least 3 classes" in err
    code, _, err = run(capsys, *base, "--queries", "2", "--val-classes", "3", "--test-classes", "4", *QUIET)
    assert code == 2 and "the meta-train split has 2 classes, fewer than the 3 ways of its episodes" in err
    assert "3 are held out for meta-val and 4 for meta-test" in err
    code, _, err = run(capsys, "train", "--benchmark", "folder", *QUIET)
    assert code == 2 and "the folder benchmark needs data_dir" in err


# ---------------------------------------------------------------------------------------------
# Training on a folder, then `metalab predict`
# ---------------------------------------------------------------------------------------------


def support_and_queries(data_root, tmp_path, classes, shots=1):
    """A support folder (the first `shots` images of each class) and the next image of each as queries."""
    support, queries, truth = tmp_path / "support", tmp_path / "queries", {}
    queries.mkdir(exist_ok=True)
    for name in classes:
        (support / name).mkdir(parents=True)
        files = sorted((data_root / name).iterdir())
        for f in files[:shots]:
            shutil.copy(f, support / name / f.name)
        query = queries / f"{name}{files[shots].suffix}"
        shutil.copy(files[shots], query)
        truth[str(query)] = name
    return support, queries, truth


def test_train_protonet_on_rgb_folder_then_predict(tmp_path, capsys):
    root = make_folder(tmp_path / "d", classes=12, per_class=6, rgb=True)
    run_dir = tmp_path / "run"
    code, out, err = run(
        capsys,
        "train",
        "--benchmark",
        "folder",
        "--data-dir",
        root,
        "--channels",
        "3",
        "--image-size",
        "20",
        "--algorithm",
        "protonet",
        "--ways",
        "3",
        "--shots",
        "1",
        "--queries",
        "2",
        "--val-classes",
        "3",
        "--test-classes",
        "3",
        "--iterations",
        "30",
        "--meta-batch",
        "2",
        "--test-tasks",
        "20",
        "--run-dir",
        run_dir,
        "--quiet",
        "--threads",
        "1",
        "--val-every",
        "0",
    )
    assert code == 0, err
    assert "test accuracy" in out
    learner, c, _ = learner_from_checkpoint(run_dir / "checkpoint.pt")
    assert (c.benchmark, c.channels, c.image_size, c.invert) == ("folder", 3, 20, False)
    assert learner.encoder.features[0].in_channels == 3

    # 4 classes (the model was trained 3-way: ProtoNets take any number), two of them with 2 shots.
    support, queries, truth = support_and_queries(
        root, tmp_path, ["class00", "class04", "class07", "class09"]
    )
    shutil.copy(root / "class04" / "5.jpg", support / "class04" / "extra.jpg")
    code, out, err = run(capsys, "predict", run_dir / "checkpoint.pt", "--support", support, queries)
    assert code == 0, err
    lines = out.strip().splitlines()
    assert (
        "| query" in lines[0] and "prediction" in lines[0] and "class09" in lines[0] and len(lines) == 2 + 4
    )
    predictions = metalab.predict(run_dir / "checkpoint.pt", support, sorted(queries.iterdir()))
    assert [p.query for p in predictions] == sorted(truth)
    for p in predictions:
        assert list(p.probabilities) == ["class00", "class04", "class07", "class09"]
        assert abs(sum(p.probabilities.values()) - 1) < 1e-5 and p.label == max(
            p.probabilities, key=p.probabilities.get
        )
    assert sum(truth[p.query] == p.label for p in predictions) >= 3  # distinct patterns: near perfect

    out_csv = tmp_path / "p.csv"
    code, out, err = run(
        capsys, "predict", run_dir / "checkpoint.pt", "--support", support, queries, "--csv", out_csv
    )
    assert code == 0 and f"wrote 4 predictions to {out_csv}" in out
    rows = list(csv.DictReader(out_csv.open()))
    assert [r["query"] for r in rows] == [p.query for p in predictions]
    assert [r["prediction"] for r in rows] == [p.label for p in predictions]
    assert abs(float(rows[0]["class00"]) - predictions[0].probabilities["class00"]) < 1e-5

    # Errors: one clear line each.
    (support / "class05").mkdir()
    code, _, err = run(capsys, "predict", run_dir / "checkpoint.pt", "--support", support, queries)
    assert code == 2 and "class folder" in err and "class05 has no images" in err
    shutil.rmtree(support / "class05")
    (queries / "broken.png").write_bytes(b"not a png at all")
    code, _, err = run(capsys, "predict", run_dir / "checkpoint.pt", "--support", support, queries)
    assert (
        code == 2
        and "cannot read image" in err
        and "broken.png" in err
        and len(err.strip().splitlines()) == 1
    )
    code, _, err = run(capsys, "predict", run_dir / "checkpoint.pt", "--support", tmp_path / "nope", queries)
    assert code == 2 and "image folder not found" in err
    code, _, err = run(
        capsys, "predict", run_dir / "checkpoint.pt", "--support", support, tmp_path / "missing.png"
    )
    assert code == 2 and "query image or folder not found" in err
    code, _, err = run(
        capsys, "predict", run_dir / "checkpoint.pt", "--support", support, queries, "--steps", "3"
    )
    assert code == 2 and "steps applies to learners with an inner loop; protonet has none" in err


def test_maml_on_greyscale_folder_needs_exactly_its_ways(tmp_path, capsys):
    root = make_folder(tmp_path / "d", classes=9, per_class=4)
    run_dir = tmp_path / "run"
    code, _, err = run(
        capsys,
        "train",
        "--benchmark",
        "folder",
        "--data-dir",
        root,
        "--algorithm",
        "maml",
        "--ways",
        "3",
        "--shots",
        "1",
        "--queries",
        "1",
        "--inner-lr",
        "0.4",
        "--iterations",
        "3",
        "--meta-batch",
        "2",
        "--val-classes",
        "3",
        "--test-classes",
        "3",
        "--run-dir",
        run_dir,
        *QUIET,
    )
    assert code == 0, err
    learner, c, _ = learner_from_checkpoint(run_dir / "checkpoint.pt")
    assert learner.model.features[0].in_channels == 1 and learner.model.head.out_features == 3
    support, queries, _ = support_and_queries(root, tmp_path, ["class00", "class01"], shots=2)
    code, _, err = run(capsys, "predict", run_dir / "checkpoint.pt", "--support", support, queries)
    assert code == 2 and "is a 3-way maml model: its classifier head has exactly 3 outputs" in err
    assert "needs exactly 3 class folders" in err and "has 2 (class00, class01)" in err
    for name in ("class02", "class05"):  # uneven shots are fine: 2, 2, 1, 1
        (support / name).mkdir()
        shutil.copy(root / name / "0.png", support / name / "0.png")
    code, _, err = run(capsys, "predict", run_dir / "checkpoint.pt", "--support", support, queries)
    assert code == 2 and "has 4 (class00, class01, class02, class05)" in err
    shutil.rmtree(support / "class05")
    code, out, err = run(
        capsys, "predict", run_dir / "checkpoint.pt", "--support", support, queries, "--steps", "2"
    )
    assert code == 0, err
    assert len(out.strip().splitlines()) == 2 + 2


def test_predict_refuses_a_checkpoint_not_trained_on_images(tmp_path, capsys):
    assert (
        run(
            capsys, "train", "--iterations", "2", "--meta-batch", "2", "--run-dir", tmp_path / "sine", *QUIET
        )[0]
        == 0
    )
    make_folder(tmp_path / "support", classes=2, per_class=1)
    code, _, err = run(
        capsys,
        "predict",
        tmp_path / "sine" / "checkpoint.pt",
        "--support",
        tmp_path / "support",
        tmp_path / "support",
    )
    assert code == 2 and "was trained on sine; predict labels images" in err


# ---------------------------------------------------------------------------------------------
# CSV files
# ---------------------------------------------------------------------------------------------


def test_csv_classification_source(tmp_path):
    data = load_csv(classification_csv(tmp_path / "t.csv"), label="label", val_classes=2, test_classes=3)
    assert data.kind == "classification" and data.feature_names == ["a", "b", "c"]
    assert data.x.dtype == torch.float32 and tuple(data.x.shape) == (80, 3)
    assert data.group_names == [f"species_{k}" for k in range(10)]
    train_rows = torch.isin(data.y, data.splits.train)
    torch.testing.assert_close(data.x[train_rows].mean(0), torch.zeros(3), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.x[train_rows].std(0, unbiased=False), torch.ones(3), atol=1e-4, rtol=0)
    batch = data.sampler("test", ways=3, shots=2, queries=3, seed=0).sample(5)
    assert tuple(batch.support_x.shape) == (5, 6, 3) and tuple(batch.query_y.shape) == (5, 9)
    only_b = load_csv(tmp_path / "t.csv", label="label", features=["b"], val_classes=2, test_classes=3)
    assert only_b.feature_names == ["b"] and tuple(only_b.x.shape) == (80, 1)


def test_csv_regression_tasks_are_groups_of_rows(tmp_path):
    data = load_csv(
        regression_csv(tmp_path / "r.csv"), target="sales", task="shop", val_classes=2, test_classes=2
    )
    assert data.kind == "regression" and data.feature_names == ["x", "constant"]
    assert torch.all(data.x[:, 1] == 0)  # a constant column is centred, not divided by zero
    source = data.sampler("train", ways=5, shots=3, queries=4, seed=1)
    batch = source.sample(6)
    assert tuple(batch.support_x.shape) == (6, 3, 2) and tuple(batch.support_y.shape) == (6, 3, 1)
    assert tuple(batch.query_x.shape) == (6, 4, 2) and tuple(batch.query_y.shape) == (6, 4, 1)
    # Every task's rows come from one shop: y is an exact line in x within a task.
    x = torch.cat([batch.support_x, batch.query_x], 1)[..., 0].double() * data.std[0] + data.mean[0]
    y = torch.cat([batch.support_y, batch.query_y], 1)[..., 0].double()
    for xs, ys in zip(x, y):
        fit = torch.linalg.lstsq(torch.stack([xs, torch.ones_like(xs)], 1), ys[:, None]).solution
        torch.testing.assert_close(
            torch.stack([xs, torch.ones_like(xs)], 1) @ fit, ys[:, None], atol=1e-4, rtol=0
        )
    train_shops = set(data.splits.train.tolist())
    state = source.get_state()
    a = source.sample(3)
    source.set_state(state)
    b = source.sample(3)
    assert torch.equal(a.query_x, b.query_x)
    assert set(torch.unique(data.groups[torch.isin(data.groups, data.splits.test)]).tolist()).isdisjoint(
        train_shops
    )


def test_csv_errors_name_the_column_and_line(tmp_path):
    path = classification_csv(tmp_path / "t.csv")
    with pytest.raises(
        DataIntegrityError, match=r"has no label column 'species'; its columns are: a, b, c, label"
    ):
        load_csv(path, label="species")
    with pytest.raises(DataIntegrityError, match=r"has no feature column 'd'"):
        load_csv(path, label="label", features=["a", "d"])
    rows = list(csv.reader(path.open()))
    rows[5][1] = "12,5"
    write_csv(tmp_path / "bad.csv", rows[0], rows[1:])
    with pytest.raises(
        DataIntegrityError, match=r"bad\.csv, line 6, column 'b': '12,5' is not a finite number"
    ):
        load_csv(tmp_path / "bad.csv", label="label")
    rows[5][1] = ""
    write_csv(tmp_path / "bad.csv", rows[0], rows[1:])
    with pytest.raises(DataIntegrityError, match=r"line 6, column 'b': '' is not a finite number"):
        load_csv(tmp_path / "bad.csv", label="label")
    with pytest.raises(DataNotFoundError, match="CSV file not found"):
        load_csv(tmp_path / "none.csv", label="label")
    (tmp_path / "ragged.csv").write_text("a,b,label\n1,2,x\n3,y\n")
    with pytest.raises(DataIntegrityError, match="line 3: 2 fields, but the header has 3"):
        load_csv(tmp_path / "ragged.csv", label="label")
    with pytest.raises(DataIntegrityError, match=r"has no task column 'store'"):
        load_csv(regression_csv(tmp_path / "r.csv"), target="sales", task="store")
    rows[5][1] = "1e39"  # finite as a Python float, beyond float32
    write_csv(tmp_path / "bad.csv", rows[0], rows[1:])
    with pytest.raises(DataIntegrityError, match=r"line 6, column 'b': '1e39' is beyond the float32 range"):
        load_csv(tmp_path / "bad.csv", label="label")
    rows[5][1] = "7" * 200_000  # longer than the csv module reads
    write_csv(tmp_path / "bad.csv", rows[0], rows[1:])
    with pytest.raises(DataIntegrityError, match=r"bad\.csv, line 6: field larger than field limit"):
        load_csv(tmp_path / "bad.csv", label="label")


def test_csv_benchmark_configs_and_small_tasks(tmp_path, capsys):
    regression_csv(tmp_path / "r.csv", per_task=10)
    base = [
        "train",
        "--benchmark",
        "csv",
        "--data-dir",
        tmp_path / "r.csv",
        "--iterations",
        "2",
        "--meta-batch",
        "2",
        *QUIET,
    ]
    code, _, err = run(
        capsys, *base, "--csv-target", "sales", "--csv-task", "shop", "--shots", "5", "--queries", "6"
    )
    assert code == 2 and "task 'shop" in err and "has 10 rows, fewer than shots + queries = 5 + 6 = 11" in err
    code, _, err = run(capsys, *base, "--csv-target", "sales")
    assert code == 2 and "needs either 'csv_label'" in err
    code, _, err = run(capsys, *base, "--csv-label", "shop", "--csv-target", "sales", "--csv-task", "shop")
    assert code == 2 and "needs either 'csv_label'" in err
    code, _, err = run(
        capsys, *base, "--csv-target", "sales", "--csv-task", "shop", "--algorithm", "protonet"
    )
    assert code == 2 and "protonet' is a few-shot classifier" in err
    code, _, err = run(capsys, "train", "--csv-label", "x", *QUIET)
    assert code == 2 and "apply to the csv benchmark only" in err


def test_train_maml_and_protonet_on_csv_classification(tmp_path, capsys):
    path = classification_csv(tmp_path / "t.csv", classes=30)
    common = [
        "--benchmark",
        "csv",
        "--data-dir",
        path,
        "--csv-label",
        "label",
        "--ways",
        "3",
        "--shots",
        "2",
        "--queries",
        "3",
        "--val-classes",
        "5",
        "--test-classes",
        "5",
        "--meta-batch",
        "4",
        "--test-tasks",
        "50",
    ]
    code, out, err = run(
        capsys,
        "train",
        *common,
        "--algorithm",
        "maml",
        "--inner-lr",
        "0.5",
        "--eval-inner-steps",
        "5",
        "--iterations",
        "60",
        "--run-dir",
        tmp_path / "maml",
        "--quiet",
        "--threads",
        "1",
        "--val-every",
        "30",
        "--val-tasks",
        "10",
    )
    assert code == 0, err
    learner, c, _ = learner_from_checkpoint(tmp_path / "maml" / "checkpoint.pt")  # no data needed
    assert (
        c.csv_features == ["a", "b", "c"]
        and learner.model.in_features == 3
        and learner.model.out_features == 3
    )
    accuracy = float(out.split("test accuracy after 5 steps:")[1].split("%")[0]) / 100
    assert accuracy > 0.8, out  # well-separated class means (chance: 1/3); measured 100%
    code, out, err = run(
        capsys,
        "train",
        *common,
        "--algorithm",
        "protonet",
        "--hidden",
        "32",
        "16",
        "--iterations",
        "20",
        "--run-dir",
        tmp_path / "proto",
        *QUIET,
    )
    assert code == 0, err
    learner, c, _ = learner_from_checkpoint(tmp_path / "proto" / "checkpoint.pt")
    assert learner.encoder.out_features == 16
    code, out, err = run(capsys, "eval", tmp_path / "proto" / "checkpoint.pt", "--tasks", "10")
    assert code == 0 and "protonet on csv" in out and "test accuracy" in out, err
    code, _, err = run(
        capsys, "predict", tmp_path / "proto" / "checkpoint.pt", "--support", tmp_path, tmp_path
    )
    assert code == 2 and "was trained on csv; predict labels images" in err


def test_train_and_resume_maml_on_csv_regression(tmp_path):
    path = regression_csv(tmp_path / "r.csv", tasks=16)
    c = Config(
        benchmark="csv",
        data_dir=str(path),
        csv_target="sales",
        csv_task="shop",
        algorithm="maml",
        shots=4,
        queries=4,
        inner_lr=0.05,
        iterations=8,
        meta_batch=4,
        val_every=4,
        val_tasks=4,
        checkpoint_every=4,
        test_tasks=8,
    )
    full = train(c, tmp_path / "full", progress=False, log=lambda _: None)
    assert full.config.csv_features == ["x", "constant"] and full.learner.model.out_features == 1
    assert full.last_val.metric == "mse"
    train(c, tmp_path / "part", progress=False, log=lambda _: None, stop_after=4)
    resumed = train(c, tmp_path / "part", resume=True, progress=False, log=lambda _: None)
    a, b = full.learner.state_dict(), resumed.learner.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
    pretrained = train(
        Config(**{**c.__dict__, "algorithm": "pretrain"}),
        tmp_path / "pre",
        progress=False,
        log=lambda _: None,
    )
    assert pretrained.iteration == 8


# ---------------------------------------------------------------------------------------------
# Acceptance: meta-train on Omniglot, then label PNGs of new characters from disk
# ---------------------------------------------------------------------------------------------


def omniglot_folders(data, root, seed=0, characters=5, queries_per_character=4):
    """Support (1 drawing each) and query folders of new meta-test characters, as Omniglot-looking
    PNGs: black strokes on white (the stored images have ink 255, so they are inverted back)."""
    chars = [int(c) for c in data.splits.test if data.class_names[int(c)].endswith("/rot000")]
    picked = np.random.default_rng(seed).choice(chars, characters, replace=False)
    truth = {}
    for c in picked:
        name = "_".join(data.class_names[c].split("/")[1:3])  # e.g. Tengwar_character07
        images = torch.nonzero(data.y == c).flatten().tolist()

        def png(i):
            return Image.fromarray(255 - data.x[i, 0].numpy())

        (root / "support" / name).mkdir(parents=True)
        png(images[0]).save(root / "support" / name / "drawing.png")
        (root / "queries").mkdir(exist_ok=True)
        for j in range(1, 1 + queries_per_character):
            path = root / "queries" / f"{name}_{j}.png"
            png(images[j]).save(path)
            truth[str(path)] = name
    return root / "support", root / "queries", truth


@pytest.mark.data
def test_acceptance_omniglot_checkpoints_label_new_characters_from_png_files(
    omniglot, tmp_path, capsys, monkeypatch
):
    monkeypatch.setattr(train_module, "load_dataset", lambda c: omniglot)  # decoded once by the fixture
    support, queries, truth = omniglot_folders(omniglot, tmp_path)
    # The PNGs look like Omniglot's (black on white); prediction inverts them back exactly.
    first = next(iter(sorted(support.iterdir())))
    drawing = read_image(first / "drawing.png", 28, invert=True)
    assert drawing.mean() < 128 and np.array_equal(
        np.asarray(Image.open(first / "drawing.png")), 255 - drawing[0]
    )
    common = dict(
        benchmark="omniglot",
        data_dir="unused",
        shots=1,
        val_every=0,
        checkpoint_every=0,
        log_every=1000,
        seed=0,
    )
    # ProtoNet: trained on 20-way episodes (the paper trains with more ways than it tests), 100 episodes.
    proto = Config(
        algorithm="protonet",
        ways=20,
        test_ways=5,
        queries=5,
        meta_batch=1,
        iterations=100,
        outer_lr=1e-3,
        **common,
    )
    # MAML, second order, 5-way 1-shot: 100 iterations of 4 tasks; 10 adaptation steps at prediction.
    maml = Config(
        algorithm="maml",
        ways=5,
        queries=1,
        meta_batch=4,
        iterations=100,
        inner_lr=0.4,
        outer_lr=3e-3,
        **common,
    )
    for name, config, extra in (("protonet", proto, []), ("maml", maml, ["--steps", "10"])):
        train(config, tmp_path / name, progress=False, log=lambda _: None)
        out_csv = tmp_path / f"{name}.csv"
        code, out, err = run(
            capsys,
            "predict",
            tmp_path / name / "checkpoint.pt",
            "--support",
            support,
            queries,
            "--csv",
            out_csv,
            *extra,
        )
        assert code == 0, err
        rows = list(csv.DictReader(out_csv.open()))
        assert len(rows) == 20 and {r["query"] for r in rows} == set(truth)
        assert all(
            abs(sum(float(r[k]) for k in sorted(p.name for p in support.iterdir())) - 1) < 1e-4 for r in rows
        )
        correct = sum(r["prediction"] == truth[r["query"]] for r in rows)
        # Measured over 10 random sets of 5 new characters: ProtoNet 13-20 (mean 18.0), MAML 14-19
        # (mean 16.9).
        assert correct >= 12, f"{name}: {correct}/20 queries right"
