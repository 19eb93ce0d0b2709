"""The data-set benchmarks: small files made in exactly the upstream formats (CIFAR-10/100 pickled
batches, the CIFAR-10 JPEG zip, miniImageNet's CSVs and both pickle forms, tieredImageNet's PNG
pickle and npz, CUB's tgz), the checks that refuse wrong or damaged files, the colour augmentation,
the CLI (`metalab data list / download`, `metalab train --benchmark cifar_fs`), and, when present,
the real CIFAR-10 JPEG zip and Fashion-MNIST."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import run
from metalab.config import Config, ConfigError
from metalab.data import (
    DataIntegrityError,
    DataNotFoundError,
    catalog,
    cifar,
    cub,
    load_cifar10,
    load_cifar10_fewshot,
    load_cifar100,
    load_cifar_fs,
    load_cub,
    load_fashion_mnist,
    load_fc100,
    load_mini_imagenet,
    load_tiered_imagenet,
    mini_imagenet,
    standard_augment,
    store,
    tiered_imagenet,
)
from metalab.data.augment import colour_jitter, crop_padding
from metalab.data.cifar_fewshot import CIFAR100_SUPERCLASSES, CIFAR_FS_CLASSES, fc100_classes

REPO = Path(__file__).resolve().parent.parent
CIFAR10_DIR = Path(os.environ.get("METALAB_CIFAR10", REPO.parent / "shared" / "data" / "cifar10"))
FASHION_DIR = Path("/usr/share/datasets/fashion-mnist")
USER_XDG_CACHE_HOME = os.environ.get("XDG_CACHE_HOME")  # before the tests' private caches replace it
CIFAR10_NAMES = list(cifar.CIFAR10_CLASSES)
FINE = sorted(c for names in CIFAR100_SUPERCLASSES.values() for c in names)  # the official label order
COARSE = sorted(CIFAR100_SUPERCLASSES)


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every test caches into its own folder, never into the user's."""
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))


def _add(tf: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tf.addfile(info, io.BytesIO(data))


def _pixels(n: int, seed: int) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 3072), dtype=np.uint8)


def write_cifar10_tarball(path: Path, per_batch: int = 4) -> dict:
    """cifar-10-python.tar.gz in the official layout: Python-2-style pickled dicts with bytes keys."""
    batches = {}
    with tarfile.open(path, "w:gz") as tf:
        meta = {b"label_names": [n.encode() for n in CIFAR10_NAMES], b"num_cases_per_batch": per_batch}
        _add(tf, "cifar-10-batches-py/batches.meta", pickle.dumps(meta, protocol=2))
        for k, name in enumerate([f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]):
            batch = {
                b"batch_label": name.encode(),
                b"labels": [(k + j) % 10 for j in range(per_batch)],
                b"data": _pixels(per_batch, k),
                b"filenames": [f"img{j}.png".encode() for j in range(per_batch)],
            }
            batches[name] = batch
            _add(tf, f"cifar-10-batches-py/{name}", pickle.dumps(batch, protocol=2))
    return batches


def write_cifar100_tarball(path: Path, train_per_class: int = 2, test_per_class: int = 1) -> None:
    """cifar-100-python.tar.gz with the real 100 classes and 20 superclasses, a few images each."""
    coarse_of = {c: COARSE.index(s) for s, names in CIFAR100_SUPERCLASSES.items() for c in names}
    with tarfile.open(path, "w:gz") as tf:
        meta = {
            b"fine_label_names": [n.encode() for n in FINE],
            b"coarse_label_names": [n.encode() for n in COARSE],
        }
        _add(tf, "cifar-100-python/meta", pickle.dumps(meta, protocol=2))
        for k, (name, per_class) in enumerate((("train", train_per_class), ("test", test_per_class))):
            fine = [f for f in range(100) for _ in range(per_class)]
            batch = {
                b"batch_label": name.encode(),
                b"fine_labels": fine,
                b"coarse_labels": [coarse_of[FINE[f]] for f in fine],
                b"data": _pixels(len(fine), 10 + k),
                b"filenames": [b"x.png"] * len(fine),
            }
            _add(tf, f"cifar-100-python/{name}", pickle.dumps(batch, protocol=2))


def jpeg(rgb: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG", quality=quality)
    return buf.getvalue()


def png(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="PNG")
    return buf.getvalue()


def solid(colour, size=(32, 32)) -> np.ndarray:
    return np.broadcast_to(np.array(colour, dtype=np.uint8), (*size, 3)).copy()


# --- CIFAR-10 ------------------------------------------------------------------------------------------


def test_cifar10_tarball_layout_labels_and_cache(tmp_path, monkeypatch):
    batches = write_cifar10_tarball(tmp_path / "cifar-10-python.tar.gz")
    data = load_cifar10(tmp_path, verify=False)
    assert data.train_images.shape == (20, 3, 32, 32) and data.train_images.dtype == torch.uint8
    assert data.test_images.shape == (4, 3, 32, 32) and data.classes == CIFAR10_NAMES
    assert data.train_labels.dtype == torch.int64
    assert data.train_labels.tolist() == [
        lab for i in range(1, 6) for lab in batches[f"data_batch_{i}"][b"labels"]
    ]
    # Row-major planes: the first 1,024 bytes of a row are the red plane, then green, then blue.
    row = batches["data_batch_1"][b"data"][1]
    assert np.array_equal(data.train_images[1, 0].numpy(), row[:1024].reshape(32, 32))
    assert np.array_equal(data.train_images[1, 2].numpy(), row[2048:].reshape(32, 32))
    assert data.is_test.sum() == 4 and data.images.shape[0] == 24
    # The second load comes from the cache: the archive is not read again.
    monkeypatch.setattr(cifar, "_read_tarball", lambda *a: pytest.fail("the archive was decoded twice"))
    again = load_cifar10(tmp_path / "cifar-10-python.tar.gz", verify=False)
    assert torch.equal(again.train_images, data.train_images)


def test_cifar10_wrong_checksum_and_corrupt_archive_refused(tmp_path):
    path = tmp_path / "cifar-10-python.tar.gz"
    write_cifar10_tarball(path)
    with pytest.raises(DataIntegrityError, match=rf"{path}.*md5 .*expected c58f30108f718f92721af3b95e74349a"):
        load_cifar10(tmp_path)
    # A cache built without the check does not let the wrong file through later.
    load_cifar10(tmp_path, verify=False)
    with pytest.raises(DataIntegrityError, match="expected c58f3010"):
        load_cifar10(tmp_path)
    path.write_bytes(path.read_bytes()[:300])  # truncated
    with pytest.raises(DataIntegrityError, match=rf"{path}: not a readable \.tar\.gz"):
        load_cifar10(tmp_path, verify=False)


def test_cifar10_jpeg_zip_and_missing_folder(tmp_path):
    zpath = tmp_path / "cifar10-images.zip"
    colours = {"train": (200, 10, 10), "test": (10, 10, 200)}
    with zipfile.ZipFile(zpath, "w", zipfile.ZIP_STORED) as zf:
        for split in ("train", "test"):
            for name in ("cat", "airplane"):
                for i in range(2):
                    zf.writestr(f"cifar10-images/{split}/{name}/{i:04d}.jpg", jpeg(solid(colours[split])))
    data = load_cifar10(tmp_path, verify=False)
    assert data.train_images.shape == (4, 3, 32, 32)
    assert data.train_labels.tolist() == [0, 0, 3, 3]  # airplane, cat in the official label order
    red = data.train_images.float().mean(dim=(0, 2, 3))
    assert red[0] > 180 and red[2] < 40  # RGB order kept
    with pytest.raises(DataIntegrityError, match="sha256 .*expected 8506a817"):
        load_cifar10(zpath)
    with zipfile.ZipFile(zpath, "a") as zf:
        zf.writestr("cifar10-images/train/unicorn/0000.jpg", jpeg(solid((0, 0, 0))))
    with pytest.raises(DataIntegrityError, match="unexpected entry 'cifar10-images/train/unicorn/0000.jpg'"):
        load_cifar10(zpath, verify=False)
    with pytest.raises(
        DataNotFoundError, match=r"put the official cifar-10-python\.tar\.gz .* cifar10-images\.zip"
    ):
        load_cifar10(tmp_path / "empty")


# --- CIFAR-100, CIFAR-FS, FC100 ------------------------------------------------------------------------


def test_cifar_fs_and_fc100_splits(tmp_path):
    write_cifar100_tarball(tmp_path / "cifar-100-python.tar.gz")
    c100 = load_cifar100(tmp_path, verify=False)
    assert (
        c100.classes == FINE and c100.coarse_classes == COARSE and c100.train_images.shape == (200, 3, 32, 32)
    )
    fs = load_cifar_fs(tmp_path, verify=False)
    assert [len(s) for s in fs.splits] == [64, 16, 20]
    assert fs.x.shape == (300, 3, 32, 32)
    for part, ids in zip(("train", "val", "test"), fs.splits):
        assert sorted(fs.class_names[i] for i in ids.tolist()) == list(CIFAR_FS_CLASSES[part])
    fc = load_fc100(tmp_path, verify=False, image_size=20)
    assert [len(s) for s in fc.splits] == [60, 20, 20] and fc.x.shape == (300, 3, 20, 20)
    test_classes = {fc.class_names[i] for i in fc.splits.test.tolist()}
    assert (
        test_classes == set(fc100_classes("test")) and "whale" in test_classes and "bus" not in test_classes
    )
    batch = fs.sampler("test", ways=5, shots=1, queries=2, seed=0).sample(3)
    assert batch.support_x.shape == (3, 5, 3, 32, 32) and batch.support_x.max() <= 1.0


def test_cifar_fs_wrong_checksum_names_the_file(tmp_path):
    write_cifar100_tarball(tmp_path / "cifar-100-python.tar.gz")
    with pytest.raises(DataIntegrityError, match=r"cifar-100-python\.tar\.gz has md5 .* expected eb9058c3"):
        load_cifar_fs(tmp_path)
    with pytest.raises(DataNotFoundError, match="download cifar100"):
        load_fc100(tmp_path / "nowhere")


# --- miniImageNet -----------------------------------------------------------------------------------------

MINI = {
    "train": ["n01532829", "n01558993"],
    "val": ["n01855672", "n02091244"],
    "test": ["n01930112", "n01981276"],
}


def mini_arrays(per_class: int = 3) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    return {s: rng.integers(0, 256, (len(c) * per_class, 84, 84, 3), dtype=np.uint8) for s, c in MINI.items()}


def write_mini_csv(root: Path, per_class: int = 3) -> None:
    (root / "images").mkdir(parents=True)
    for split, classes in MINI.items():
        lines = ["filename,label"]
        for c in classes:
            for i in range(per_class):
                name = f"{c}{i + 1:08d}.jpg"
                folder = root / "images" / (c if split == "test" else "")  # both layouts of images/
                folder.mkdir(exist_ok=True)
                (folder / name).write_bytes(jpeg(solid((40 * i, 100, 200), size=(60, 50))))
                lines.append(f"{name},{c}")
        (root / f"{split}.csv").write_text("\n".join(lines) + "\n")


def test_mini_imagenet_csv_images_and_cache(tmp_path, monkeypatch):
    write_mini_csv(tmp_path)
    data = load_mini_imagenet(tmp_path, image_size=84, verify=False)
    assert data.x.shape == (18, 3, 84, 84) and data.image_shape == (3, 84, 84)
    assert [len(s) for s in data.splits] == [2, 2, 2]
    assert [data.class_names[i] for i in data.splits.val.tolist()] == MINI["val"]
    assert int(data.x[:, 2].float().mean()) in range(195, 206)  # the blue channel of every image
    monkeypatch.setattr(mini_imagenet, "_decode_csv_split", lambda *a: pytest.fail("decoded twice"))
    again = load_mini_imagenet(tmp_path, image_size=84, verify=False)
    assert torch.equal(again.x, data.x)
    with pytest.raises(DataIntegrityError, match=r"train\.csv has md5 .*expected 9525e153"):
        load_mini_imagenet(tmp_path)


def test_mini_imagenet_both_pickle_forms_agree(tmp_path):
    arrays = mini_arrays()
    cache_dir, moptnet_dir = tmp_path / "cache_pkl", tmp_path / "metaoptnet"
    cache_dir.mkdir()
    moptnet_dir.mkdir()
    offset = 0
    for split, classes in MINI.items():
        x = arrays[split]
        class_dict = {c: list(range(k * 3, k * 3 + 3)) for k, c in enumerate(classes)}
        with open(cache_dir / f"mini-imagenet-cache-{split}.pkl", "wb") as f:
            pickle.dump({"image_data": x, "class_dict": class_dict}, f, protocol=2)
        labels = [offset + k for k in range(len(classes)) for _ in range(3)]  # global labels, as MetaOptNet's
        name = mini_imagenet.MINI_IMAGENET_LAYOUTS["metaoptnet"][split]
        with open(moptnet_dir / name, "wb") as f:
            pickle.dump(
                {
                    "data": x,
                    "labels": labels,
                    "catname2label": {c: offset + k for k, c in enumerate(classes)},
                },
                f,
            )
        offset += len(classes)
    a = load_mini_imagenet(cache_dir, verify=False)
    b = load_mini_imagenet(moptnet_dir, verify=False, image_size=42)
    assert torch.equal(a.x, torch.from_numpy(np.concatenate(list(arrays.values()))).permute(0, 3, 1, 2))
    assert a.class_names == b.class_names == [c for s in MINI.values() for c in s]
    assert torch.equal(a.y, b.y) and b.x.shape == (18, 3, 42, 42)
    with pytest.raises(DataIntegrityError, match="not Ravi & Larochelle's 64"):
        load_mini_imagenet(moptnet_dir)


def test_mini_imagenet_missing_folder_says_what_to_put_where(tmp_path):
    with pytest.raises(DataNotFoundError) as err:
        load_mini_imagenet(tmp_path)
    message = str(err.value)
    assert str(tmp_path) in message and "no public download" in message
    for name in (
        "train.csv",
        "images/",
        "mini-imagenet-cache-train.pkl",
        "miniImageNet_category_split_train",
    ):
        assert name in message


def test_pickles_that_would_run_code_are_refused(tmp_path):
    class Evil:
        def __reduce__(self):
            return (os.system, ("true",))

    for split in ("train", "val", "test"):
        (tmp_path / f"mini-imagenet-cache-{split}.pkl").write_bytes(pickle.dumps({"image_data": Evil()}))
    with pytest.raises(DataIntegrityError, match="refusing to load .*system"):
        load_mini_imagenet(tmp_path, verify=False)


# --- tieredImageNet -----------------------------------------------------------------------------------------


def test_tiered_imagenet_png_pickle_and_npz_give_the_same_rgb(tmp_path):
    rng = np.random.default_rng(1)
    png_dir, npz_dir = tmp_path / "png", tmp_path / "npz"
    png_dir.mkdir()
    npz_dir.mkdir()
    expected = []
    for split, classes in (("train", 3), ("val", 2), ("test", 2)):
        rgb = rng.integers(0, 256, (classes * 2, 84, 84, 3), dtype=np.uint8)
        expected.append(rgb)
        labels = {
            "label_specific": np.repeat(np.arange(classes), 2),
            "label_specific_str": [f"n0{split}{k}" for k in range(classes)],
            "label_general": np.zeros(classes * 2, dtype=np.int64),
            "label_general_str": ["category"],
        }
        for folder in (png_dir, npz_dir):
            with open(folder / f"{split}_labels.pkl", "wb") as f:
                pickle.dump(labels, f, protocol=2)
        # As the authors' files: OpenCV's imencode output, a (n, 1) uint8 array of PNG bytes ...
        encoded = [np.frombuffer(png(im), dtype=np.uint8).reshape(-1, 1) for im in rgb]
        with open(png_dir / f"{split}_images_png.pkl", "wb") as f:
            pickle.dump(encoded, f, protocol=2)
        # ... and their decompressed npz, written by OpenCV: BGR.
        np.savez(npz_dir / f"{split}_images.npz", images=rgb[..., ::-1])
    from_png = load_tiered_imagenet(png_dir, verify=False)
    from_npz = load_tiered_imagenet(npz_dir, verify=False)
    want = torch.from_numpy(np.concatenate(expected)).permute(0, 3, 1, 2)
    assert torch.equal(from_png.x, want) and torch.equal(from_npz.x, want)
    assert [len(s) for s in from_png.splits] == [3, 2, 2] and from_png.class_names[3] == "val/n0val0"
    with pytest.raises(
        DataIntegrityError, match="has 3 classes / 1 categories / 6 images, expected 351 / 20 / 448,695"
    ):
        load_tiered_imagenet(png_dir)
    (png_dir / "val_images_png.pkl").write_bytes(b"\x80\x02not a pickle")
    with pytest.raises(DataIntegrityError, match=r"cannot read .*val_images_png\.pkl"):
        load_tiered_imagenet(png_dir, verify=False)
    with pytest.raises(DataNotFoundError, match="train_labels.pkl"):
        load_tiered_imagenet(tmp_path)
    assert tiered_imagenet.find_tiered_imagenet(npz_dir)["test"][1].name == "test_images.npz"


# --- CUB ------------------------------------------------------------------------------------------------


def write_cub(path: Path, classes: int = 8, per_class: int = 2) -> list[str]:
    folders = [f"{k + 1:03d}.Bird_{k}" for k in range(classes)]
    images, labels = [], []
    with tarfile.open(path, "w:gz") as tf:
        _add(tf, "attributes.txt", b"1 has_bill_shape::curved\n")  # outside CUB_200_2011/, as upstream
        for k, folder in enumerate(folders):
            for i in range(per_class):
                rel = f"{folder}/{folder[4:]}_{i:04d}_{k}.jpg"
                images.append(rel)
                labels.append(k + 1)
                _add(tf, f"CUB_200_2011/images/{rel}", jpeg(solid((30 * k, 20, 240), size=(120, 90))))
        _add(
            tf, "CUB_200_2011/classes.txt", "".join(f"{k + 1} {f}\n" for k, f in enumerate(folders)).encode()
        )
        _add(tf, "CUB_200_2011/images.txt", "".join(f"{i + 1} {r}\n" for i, r in enumerate(images)).encode())
        pairs = "".join(f"{i + 1} {lab}\n" for i, lab in enumerate(labels))
        _add(tf, "CUB_200_2011/image_class_labels.txt", pairs.encode())
    return folders


def test_cub_tgz_chen_split_and_checksum(tmp_path, monkeypatch):
    folders = write_cub(tmp_path / "CUB_200_2011.tgz")
    data = load_cub(tmp_path, image_size=24, verify=False)
    assert data.x.shape == (16, 3, 24, 24) and data.class_names == folders
    names = [[data.class_names[i] for i in s.tolist()] for s in data.splits]
    assert names == [[folders[i] for i in (0, 2, 4, 6)], [folders[1], folders[5]], [folders[3], folders[7]]]
    assert data.y.tolist() == [k for k in range(8) for _ in range(2)]
    assert float(data.x[:, 2].float().mean()) > 200  # blue photographs stay blue
    monkeypatch.setattr(cub._Reader, "read_all", lambda *a: pytest.fail("decoded twice"))
    assert torch.equal(load_cub(tmp_path, image_size=24, verify=False).x, data.x)
    with pytest.raises(DataIntegrityError, match=r"CUB_200_2011\.tgz has md5 .*expected 97eceeb1"):
        load_cub(tmp_path, image_size=24)
    with pytest.raises(DataNotFoundError, match="download cub"):
        load_cub(tmp_path / "elsewhere")


# --- downloads and the command line -----------------------------------------------------------------------


def test_download_with_a_wrong_checksum_is_refused_and_removed(tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(store, "_urlopen", lambda url: io.BytesIO(b"not the archive" * 100))
    with pytest.raises(DataIntegrityError, match=r"cifar-10-python\.tar\.gz has md5 .* nothing was saved"):
        catalog.download("cifar10", tmp_path / "c10")
    assert list((tmp_path / "c10").iterdir()) == []  # the partial file is removed
    code, _, err = run(capsys, "data", "download", "cifar_fs", "--data-dir", tmp_path / "c100")
    assert code == 2 and err.startswith(
        "metalab: error: downloaded https://www.cs.toronto.edu/~kriz/cifar-100"
    )
    assert err.count("\n") == 1 and list((tmp_path / "c100").iterdir()) == []
    code, _, err = run(capsys, "data", "download", "tiered_imagenet", "--data-dir", tmp_path)
    assert code == 2 and "no public download" in err and "_labels.pkl" in err


def test_data_list_names_every_data_set_and_what_is_present(tmp_path, capsys):
    write_cifar100_tarball(tmp_path / "cifar-100-python.tar.gz")
    code, out, _ = run(capsys, "data", "list", "--data-dir", tmp_path)
    assert code == 0
    for name in catalog.CATALOG:
        assert f"\n{name}: " in "\n" + out
    assert "eb9058c3a382ffc7106e4002c42a8d85" in out and "97eceeb196236b17998738112f37df78" in out
    assert "64 / 16 / 20" in out and "351 / 97 / 160" in out and "100 / 50 / 50" in out
    assert out.count(f"present in {tmp_path} (cifar-100-python.tar.gz)") == 2  # cifar_fs and fc100
    assert "no public URL" in out


def test_train_on_cifar_fs_files_from_the_command_line(tmp_path, capsys, monkeypatch):
    # Plain Conv-4 ops: the private XDG_CACHE_HOME would make the compiled CPU kernels build again.
    monkeypatch.setenv("METALAB_KERNELS", "0")
    (tmp_path / "data").mkdir()
    write_cifar100_tarball(tmp_path / "data" / "cifar-100-python.tar.gz")
    args = ["train", "--benchmark", "cifar_fs", "--data-dir", tmp_path / "data", "--algorithm", "protonet"]
    args += [
        "--ways",
        2,
        "--shots",
        1,
        "--queries",
        1,
        "--meta-batch",
        2,
        "--iterations",
        2,
        "--val-every",
        0,
    ]
    args += ["--test-tasks", 4, "--threads", 1]
    code, _, err = run(capsys, *args, "--run-dir", tmp_path / "refused")
    assert code == 2 and "cifar-100-python.tar.gz has md5" in err and "verify_data: false" in err
    code, out, err = run(capsys, *args, "--verify-data", "false", "--run-dir", tmp_path / "run")
    assert code == 0, err
    saved = (tmp_path / "run" / "config.yaml").read_text()
    assert "image_size: 32" in saved and "channels: 3" in saved and "augment: none" in saved
    assert "test accuracy" in out


# --- configuration ------------------------------------------------------------------------------------------


def test_defaults_and_checks_of_the_data_set_keys(tmp_path):
    c = Config(algorithm="baseline", benchmark="mini_imagenet", data_dir=str(tmp_path), ways=5).resolved()
    assert (c.image_size, c.channels, c.augment) == (84, 3, "standard")
    c = Config(algorithm="protonet", benchmark="cifar_fs", data_dir=str(tmp_path), image_size=40).resolved()
    assert (c.image_size, c.channels, c.augment) == (40, 3, "none")
    assert Config(algorithm="baseline", benchmark="omniglot").resolved().augment == "none"
    assert Config(algorithm="protonet", benchmark="cub", augment="standard").resolved().augment == "standard"
    with pytest.raises(ConfigError, match="'test_ways' .21. exceeds the 20 classes of fc100's meta-val set"):
        Config(algorithm="protonet", benchmark="fc100", ways=21, test_ways=21).resolved()
    with pytest.raises(ConfigError, match="cifar_fs is RGB: it needs 'channels' 3"):
        Config(algorithm="protonet", benchmark="cifar_fs", channels=1).resolved()
    with pytest.raises(ConfigError, match="'augment' .standard. applies to image benchmarks"):
        Config(algorithm="maml", benchmark="sine", augment="standard").resolved()


# --- augmentation ------------------------------------------------------------------------------------------


def test_augmentation_flips_half_shifts_crops_and_stays_in_range():
    g = torch.Generator().manual_seed(0)
    n = 4000
    # Left half dark, right half bright: a flip puts the bright half on the left.
    x = torch.zeros(n, 3, 32, 32)
    x[..., 16:] = 1.0
    out = standard_augment(x, g, jitter=0.0)
    flipped = (out[..., :12].mean(dim=(1, 2, 3)) > out[..., 20:].mean(dim=(1, 2, 3))).float().mean()
    assert 0.46 < float(flipped) < 0.54
    # One bright pixel: where it lands gives each image's crop offset, uniform in [-4, 4] per axis.
    x = torch.zeros(n, 1, 32, 32)
    x[:, :, 16, 16] = 1.0
    out = standard_augment(x, torch.Generator().manual_seed(1), jitter=0.0)
    where = out.flatten(1).argmax(dim=1)
    rows, cols = where // 32 - 16, where % 32 - 16
    assert set(rows.tolist()) == set(range(-4, 5)) and abs(float(rows.float().mean())) < 0.2
    # A flip mirrors column 16 to column 15 and the shift with it: columns 16 - 5 .. 16 + 4.
    assert set(cols.tolist()) == set(range(-5, 5))
    assert crop_padding(32) == 4 and crop_padding(84) == 8
    # Colour jitter on a flat grey image: brightness scales it by [0.6, 1.4]; contrast and
    # saturation leave flat grey alone. On a colour image, saturation 0.6..1.4 moves the channels
    # towards or away from grey, never past it. Nothing leaves [0, 1].
    x = torch.full((n, 3, 8, 8), 0.5)
    level = colour_jitter(x, torch.Generator().manual_seed(2))[:, 0, 4, 4]
    assert 0.3 - 1e-6 <= float(level.min()) < 0.32 and 0.68 < float(level.max()) <= 0.7 + 1e-6
    red = torch.zeros(n, 3, 4, 4)
    red[:, 0] = 0.5
    jittered = colour_jitter(red, torch.Generator().manual_seed(4))
    spread = jittered[:, 0, 0, 0] - jittered[:, 1, 0, 0]  # red minus green: the saturation left
    assert float(spread.min()) > 0 and float(spread.std()) > 0.05
    bright = standard_augment(torch.rand(500, 3, 32, 32), torch.Generator().manual_seed(3))
    assert 0.0 <= float(bright.min()) and float(bright.max()) <= 1.0
    assert torch.equal(
        standard_augment(x[:8], torch.Generator().manual_seed(9)),
        standard_augment(x[:8], torch.Generator().manual_seed(9)),
    )


def test_augmented_training_batches_resume_exactly_and_evaluation_is_untouched(tmp_path):
    from metalab.builders import build_source

    write_cifar100_tarball(tmp_path / "cifar-100-python.tar.gz")
    c = Config(
        algorithm="baseline", benchmark="cifar_fs", data_dir=str(tmp_path), verify_data=False, ways=2,
        shots=1, queries=1, test_ways=2,
    ).resolved()  # fmt: skip
    assert c.augment == "standard"
    dataset = load_cifar_fs(tmp_path, verify=False)
    train = build_source(c, "train", dataset)
    plain = dataset.batches("train", batch_size=1, seed=c.seed)
    first, base = train.sample(64), plain.sample(64)
    assert torch.equal(first.support_y, base.support_y) and not torch.equal(first.support_x, base.support_x)
    state = train.get_state()
    a = train.sample(8)
    train.set_state(state)
    b = train.sample(8)
    assert torch.equal(a.support_x, b.support_x)
    test = build_source(c, "test", dataset).sample(2)
    again = dataset.sampler("test", ways=2, shots=1, queries=1, seed=20_000).sample(2)
    assert torch.equal(test.support_x, again.support_x)  # meta-test episodes are never augmented


# --- real data, when present -------------------------------------------------------------------------------


def test_real_cifar10_jpeg_zip(monkeypatch):
    """Decoded into the user's cache folder, as `metalab train` does: the first run decodes the
    60,000 JPEGs (about 7 s on one free core), later runs read the cache."""
    if USER_XDG_CACHE_HOME is None:
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    else:
        monkeypatch.setenv("XDG_CACHE_HOME", USER_XDG_CACHE_HOME)
    if not (CIFAR10_DIR / "cifar10-images.zip").is_file():
        pytest.skip(f"the CIFAR-10 JPEG zip not found at {CIFAR10_DIR} (set METALAB_CIFAR10 to its folder)")
    data = load_cifar10(CIFAR10_DIR)  # the sha256 and the official counts are checked
    assert data.train_images.shape == (50_000, 3, 32, 32) and data.test_images.shape == (10_000, 3, 32, 32)
    assert torch.bincount(data.test_labels).tolist() == [1000] * 10 and data.classes == CIFAR10_NAMES
    # The official training set's channel means are 125.3, 123.0, 113.9: the JPEG copy decodes to them.
    means = data.train_images.float().mean(dim=(0, 2, 3))
    assert torch.allclose(means, torch.tensor([125.3, 123.0, 113.9]), atol=1.0)
    few = load_cifar10_fewshot(CIFAR10_DIR)
    sizes = [int(torch.isin(few.y, s).sum()) for s in few.splits]
    assert sizes == [25_000, 5_000, 30_000]
    assert [few.class_names[i] for i in few.splits.test.tolist()] == CIFAR10_NAMES[5:]


def test_real_fashion_mnist():
    if not (FASHION_DIR / "train-images-idx3-ubyte.gz").is_file():
        pytest.skip(f"Fashion-MNIST not found at {FASHION_DIR} (apt-get install dataset-fashion-mnist)")
    data = load_fashion_mnist(FASHION_DIR)
    assert data.x.shape == (70_000, 1, 28, 28) and [len(s) for s in data.splits] == [5, 5, 5]
    assert int(torch.isin(data.y, data.splits.test).sum()) == 35_000
