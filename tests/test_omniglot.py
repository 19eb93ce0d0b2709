"""Omniglot loading: small generated archives (fast, offline) and, when present, the shared real data."""

from __future__ import annotations

import hashlib
import io
import urllib.error
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from metalab.data import (
    DataIntegrityError,
    DataNotFoundError,
    FewShotDataset,
    download_omniglot,
    load_omniglot,
    omniglot,
    read_omniglot_zip,
    to_float,
)
from metalab.data.omniglot.splits import _random_split

IMAGES = 3  # per character in the small archives

# Small archives in the official layout; the alphabet names decide the split (see docs/omniglot.md):
# Latin -> train, Hebrew -> val (both splits), Kannada -> test, Gurmukhi 41 -> train, 42 -> test.
SMALL = {
    "images_background": {"Latin": ["character01", "character02"], "Hebrew": ["character01"]},
    "images_evaluation": {"Kannada": ["character01"], "Gurmukhi": ["character41", "character42"]},
}


def png_bytes(seed: int, size: int = 20, fill: int | None = None) -> bytes:
    """A 1-bit PNG like Omniglot's (ink black = 0, background white = 1), asymmetric so rotations differ."""
    img = Image.new("1", (size, size), 1 if fill is None else fill)
    if fill is None:
        rng = np.random.default_rng(seed)
        for _ in range(12):
            img.putpixel((int(rng.integers(size)), int(rng.integers(size // 2))), 0)
        for i in range(size // 2):
            img.putpixel((2, i), 0)  # a stroke in the top-left quarter
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def write_archive(
    path: Path,
    layout: dict[str, list[str]],
    extra: dict[str, bytes] | None = None,
    compression: int = zipfile.ZIP_DEFLATED,
) -> Path:
    root = path.name.removesuffix(".zip")
    with zipfile.ZipFile(path, "w", compression) as zf:
        zf.writestr(f"{root}/", b"")
        seed = 0
        for alphabet, characters in layout.items():
            for character in characters:
                for k in range(IMAGES):
                    seed += 1
                    zf.writestr(f"{root}/{alphabet}/{character}/{seed:04d}_{k + 1:02d}.png", png_bytes(seed))
        for name, data in (extra or {}).items():
            zf.writestr(name, data)
    return path


@pytest.fixture
def small_dir(tmp_path: Path) -> Path:
    data = tmp_path / "omniglot"
    data.mkdir()
    for name, layout in SMALL.items():
        write_archive(data / f"{name}.zip", layout)
    return data


def load_small(data_dir: Path, cache: Path, **kwargs) -> FewShotDataset:
    return load_omniglot(data_dir, cache_dir=cache, verify_counts=False, **kwargs)


# ------------------------------------------------------------------------------ reading archives


def test_read_archive_shapes_labels_and_pixel_convention(small_dir: Path) -> None:
    arc = read_omniglot_zip(small_dir / "images_background.zip", image_size=28, verify_counts=False)
    assert arc.characters == [
        "images_background/Hebrew/character01",
        "images_background/Latin/character01",
        "images_background/Latin/character02",
    ]
    assert arc.images.dtype == torch.uint8 and arc.images.shape == (9, 28, 28)
    assert arc.character.tolist() == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    # Background is 0 and ink 255 (the PNG's black strokes, inverted).
    assert arc.images[:, -1, -1].tolist() == [0] * 9
    assert int(arc.images.max()) > 200


def test_pixel_convention_blank_and_full(tmp_path: Path) -> None:
    path = tmp_path / "images_background.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("images_background/A/character01/blank.png", png_bytes(0, fill=1))
        zf.writestr("images_background/A/character01/ink.png", png_bytes(0, fill=0))
    arc = read_omniglot_zip(path, image_size=5, verify_counts=False)
    assert arc.images[0].eq(0).all() and arc.images[1].eq(255).all()


def test_official_archive_counts_checked_by_default(small_dir: Path) -> None:
    with pytest.raises(
        DataIntegrityError, match=r"images_background\.zip.*expected 30 alphabets / 964 characters"
    ):
        read_omniglot_zip(small_dir / "images_background.zip")
    with pytest.raises(DataIntegrityError, match="expected 30 alphabets"):
        load_omniglot(small_dir, cache_dir=small_dir / "cache")


def test_wrong_images_per_character_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Shrink the expected counts to the small archive's, so only the 20-per-character rule fails.
    spec = omniglot.ARCHIVES["images_background"]
    monkeypatch.setitem(
        omniglot.ARCHIVES, "images_background", spec._replace(alphabets=2, characters=3, images=9)
    )
    path = write_archive(tmp_path / "images_background.zip", SMALL["images_background"])
    with pytest.raises(
        DataIntegrityError, match=r"images_background/Hebrew/character01 has 3 images, expected 20"
    ):
        read_omniglot_zip(path)


@pytest.mark.parametrize(
    "entry",
    [
        "../evil.png",
        "/abs/evil.png",
        "images_background/../../evil.png",
        "images_background\\..\\evil.png",
        "C:/evil.png",
    ],
)
def test_unsafe_entry_rejected(tmp_path: Path, entry: str) -> None:
    path = write_archive(
        tmp_path / "images_background.zip", {"A": ["character01"]}, extra={entry: png_bytes(1)}
    )
    assert entry in zipfile.ZipFile(path).namelist()  # the name reached the archive unchanged
    with pytest.raises(DataIntegrityError, match="unsafe entry") as info:
        read_omniglot_zip(path, verify_counts=False)
    assert repr(entry) in str(info.value) and "images_background.zip" in str(info.value)


@pytest.mark.parametrize(
    "entry", ["elsewhere/A/character01/x.png", "images_background/A/x.png", "images_background/A/c/x.txt"]
)
def test_wrong_layout_rejected(tmp_path: Path, entry: str) -> None:
    path = write_archive(tmp_path / "images_background.zip", {"A": ["character01"]}, extra={entry: b"x"})
    with pytest.raises(DataIntegrityError, match=f"images_background.zip.*{entry}"):
        read_omniglot_zip(path, verify_counts=False)


def test_truncated_zip_rejected(small_dir: Path) -> None:
    path = small_dir / "images_background.zip"
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    with pytest.raises(DataIntegrityError, match=r"images_background\.zip: not a readable zip"):
        read_omniglot_zip(path, verify_counts=False)


def test_crc_error_names_archive_and_entry(tmp_path: Path) -> None:
    path = write_archive(
        tmp_path / "images_background.zip", {"A": ["character01"]}, compression=zipfile.ZIP_STORED
    )
    info = zipfile.ZipFile(path).infolist()[-1]
    raw = bytearray(path.read_bytes())
    # Flip a byte in the middle of the last PNG's stored data; the central directory stays intact.
    at = info.header_offset + 30 + len(info.filename) + info.file_size // 2
    raw[at] ^= 0xFF
    path.write_bytes(bytes(raw))
    with pytest.raises(
        DataIntegrityError, match=f"images_background.zip: cannot read entry '{info.filename}'"
    ):
        read_omniglot_zip(path, verify_counts=False)


def test_undecodable_png_names_entry(tmp_path: Path) -> None:
    bad = "images_background/A/character01/bad.png"
    path = write_archive(
        tmp_path / "images_background.zip", {"A": ["character01"]}, extra={bad: b"\x89PNG not really"}
    )
    with pytest.raises(DataIntegrityError, match=f"cannot read entry '{bad}'"):
        read_omniglot_zip(path, verify_counts=False)


def test_an_image_bomb_or_an_oversized_entry_is_refused_before_it_is_decoded(tmp_path: Path) -> None:
    name = "images_background/A/character01/bomb.png"
    for side, message in ((5_000, "5000x5000 image, beyond"), (20_000, "DecompressionBombError")):
        bomb = io.BytesIO()
        Image.new("1", (side, side), 1).save(bomb, format="PNG")  # millions of pixels in a small file
        assert len(bomb.getvalue()) < 200_000
        path = write_archive(
            tmp_path / "images_background.zip", {"A": ["character01"]}, extra={name: bomb.getvalue()}
        )
        with pytest.raises(DataIntegrityError, match=f"cannot read entry '{name}' .*{message}"):
            read_omniglot_zip(path, verify_counts=False)
    big = "images_background/A/character01/big.png"
    path = write_archive(
        tmp_path / "images_background.zip", {"A": ["character01"]}, extra={big: bytes(2 << 20)}
    )
    with pytest.raises(DataIntegrityError, match=f"cannot read entry '{big}' .*2,097,152 bytes, beyond"):
        read_omniglot_zip(path, verify_counts=False)


def test_missing_archive_message(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_omniglot(tmp_path)
    message = str(info.value)
    assert isinstance(info.value, FileNotFoundError)
    assert f"images_background.zip not found at {tmp_path / 'images_background.zip'}" in message
    assert f"metalab data download omniglot --data-dir {tmp_path}" in message
    assert omniglot.ARCHIVES["images_background"].url in message


# ------------------------------------------------------------------------------ splits and rotations


def test_vinyals_small_rotations_and_splits(small_dir: Path, tmp_path: Path) -> None:
    data = load_small(small_dir, tmp_path / "cache")
    chars = 6
    assert data.x.shape == (chars * 4 * IMAGES, 1, 28, 28) and data.x.dtype == torch.uint8
    assert data.y.dtype == torch.long and data.image_shape == (1, 28, 28)
    assert torch.bincount(data.y).tolist() == [IMAGES] * (chars * 4)
    assert data.class_names[:4] == [
        f"images_background/Hebrew/character01/rot{d:03d}" for d in (0, 90, 180, 270)
    ]

    def names(ids: torch.Tensor) -> set[str]:
        return {data.class_names[i].rsplit("/", 1)[0] for i in ids.tolist()}

    assert names(data.splits.train) == {
        "images_background/Latin/character01",
        "images_background/Latin/character02",
        "images_evaluation/Gurmukhi/character41",
    }
    assert names(data.splits.val) == {"images_background/Hebrew/character01"}
    assert names(data.splits.test) == {
        "images_evaluation/Gurmukhi/character42",
        "images_evaluation/Kannada/character01",
    }
    all_ids = torch.cat(list(data.splits))
    assert all_ids.numel() == all_ids.unique().numel() == data.num_classes  # disjoint and complete
    for split in data.splits:  # all four rotations of a character share its split
        assert torch.bincount(split // 4, minlength=chars)[split // 4].eq(4).all()
    # Class 4c + r holds the images of class 4c rotated by r * 90 degrees counter-clockwise.
    for c in range(chars):
        base = data.x[data.y == 4 * c]
        for r in range(4):
            assert torch.equal(data.x[data.y == 4 * c + r], torch.rot90(base, r, dims=(2, 3)))
    assert not torch.equal(data.x[data.y == 1], data.x[data.y == 0])


def test_lake_small_splits(small_dir: Path, tmp_path: Path) -> None:
    data = load_small(small_dir, tmp_path / "cache", split="lake")
    assert data.x.shape == (6 * IMAGES, 1, 28, 28)
    names = lambda ids: {data.class_names[i] for i in ids.tolist()}  # noqa: E731
    assert names(data.splits.train) == {
        "images_background/Latin/character01",
        "images_background/Latin/character02",
    }
    assert names(data.splits.val) == {"images_background/Hebrew/character01"}
    assert names(data.splits.test) == {f"images_evaluation/Gurmukhi/character4{i}" for i in (1, 2)} | {
        "images_evaluation/Kannada/character01"
    }
    rotated = load_small(small_dir, tmp_path / "cache", split="lake", rotations=True)
    assert rotated.num_classes == 24 and rotated.splits.test.numel() == 12


def test_random_small_split_is_a_fixed_draw_of_whole_characters(small_dir: Path, tmp_path: Path) -> None:
    data = load_small(small_dir, tmp_path / "cache", split="random")
    assert data.num_classes == 6 * 4  # rotated by default, as "vinyals"
    characters = [data.class_names[c].rsplit("/", 1)[0] for c in range(0, data.num_classes, 4)]
    parts = [{data.class_names[i].rsplit("/", 1)[0] for i in ids.tolist()} for ids in data.splits]
    # 6 characters in the proportions 1,100 : 100 : 423 give 4 : 0 : 2.
    assert [len(p) for p in parts] == [4, 0, 2] and set().union(*parts) == set(characters)
    for split in data.splits:  # all four rotations of a character share its split
        assert torch.bincount(split // 4, minlength=6)[split // 4].eq(4).all()
    # The draw depends on the characters' names only, not on the order they are listed in.
    which = _random_split(characters)
    assert torch.equal(_random_split(characters[::-1]), which.flip(0))
    assert {characters[i] for i in torch.nonzero(which == 2).flatten().tolist()} == parts[2]
    # A second load draws the same split.
    again = load_small(small_dir, tmp_path / "cache", split="random")
    assert all(torch.equal(a, b) for a, b in zip(again.splits, data.splits))


def test_sampler_and_to_float(small_dir: Path, tmp_path: Path) -> None:
    data = load_small(small_dir, tmp_path / "cache")
    sampler = data.sampler("train", ways=3, shots=1, queries=2, seed=0)
    batch = sampler.sample(4)
    assert batch.support_x.shape == (4, 3, 1, 28, 28) and batch.query_x.shape == (4, 6, 1, 28, 28)
    assert (
        batch.support_x.dtype == torch.float32 and 0 <= batch.support_x.min() and batch.support_x.max() <= 1
    )
    _, classes = sampler.sample_indices(8)
    assert set(classes.flatten().tolist()) <= set(data.splits.train.tolist())
    x = torch.tensor([[0, 51, 255]], dtype=torch.uint8)
    assert torch.allclose(to_float(x), torch.tensor([[0.0, 0.2, 1.0]])) and to_float(x).shape == x.shape
    with pytest.raises(TypeError):
        to_float(x.float())
    with pytest.raises(ValueError, match="split_name"):
        data.sampler("meta-test", 2, 1, 1)


# ------------------------------------------------------------------------------ cache


def test_cache_hit_does_not_read_the_zip(
    small_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    first = load_small(small_dir, cache)
    assert len(list(cache.glob("*.pt"))) == 2 and not list(cache.glob("*.tmp"))

    def no_zip(*args, **kwargs):
        raise AssertionError("the archive was decoded again despite the cache")

    monkeypatch.setattr(omniglot.cache, "read_omniglot_zip", no_zip)
    monkeypatch.setattr(zipfile, "ZipFile", no_zip)
    second = load_small(small_dir, cache)
    assert torch.equal(first.x, second.x) and torch.equal(first.y, second.y)
    assert first.class_names == second.class_names
    assert all(torch.equal(a, b) for a, b in zip(first.splits, second.splits))


def test_cache_keyed_by_archive_and_size(small_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_small(small_dir, cache, image_size=28)
    load_small(small_dir, cache, image_size=14)
    assert len(list(cache.glob("*.pt"))) == 4
    write_archive(small_dir / "images_background.zip", {"Latin": ["character01"], "Hebrew": ["character01"]})
    data = load_small(small_dir, cache)  # a changed archive is decoded afresh, not served stale
    assert len(list(cache.glob("*.pt"))) == 5 and data.num_classes == 5 * 4


def test_default_cache_is_the_users_and_the_data_folder_is_untouched(
    small_dir: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    before = sorted(p.name for p in small_dir.iterdir())
    load_omniglot(small_dir, verify_counts=False)
    assert len(list((tmp_path / "xdg" / "metalab" / "omniglot").glob("*.pt"))) == 2
    assert sorted(p.name for p in small_dir.iterdir()) == before


def test_corrupt_cache_rejected(small_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_small(small_dir, cache)
    victim = sorted(cache.glob("images_background-*.pt"))[0]
    victim.write_bytes(victim.read_bytes()[:1000])
    with pytest.raises(DataIntegrityError, match="cache file .* is corrupt") as info:
        load_small(small_dir, cache)
    assert str(victim) in str(info.value) and "delete it" in str(info.value)


def test_cache_with_wrong_contents_rejected(small_dir: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    load_small(small_dir, cache)
    victim = sorted(cache.glob("images_background-*.pt"))[0]
    blob = torch.load(victim, weights_only=True)
    blob["images"] = blob["images"][:-1]  # one image short: must not be half-used
    torch.save(blob, victim)
    with pytest.raises(DataIntegrityError, match="delete it"):
        load_small(small_dir, cache)


# ------------------------------------------------------------------------------ download


class FakeServer:
    """Serves fixed bytes per URL, as `urllib.request.urlopen` would."""

    def __init__(self, payloads: dict[str, bytes]) -> None:
        self.payloads, self.requested = payloads, []

    def __call__(self, url: str) -> io.BytesIO:
        self.requested.append(url)
        return io.BytesIO(self.payloads[url])


def official_urls() -> dict[str, str]:
    return {name: spec.url for name, spec in omniglot.ARCHIVES.items()}


def test_download_good_checksum(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payloads = {}
    for name, url in official_urls().items():
        payloads[url] = f"fake {name}".encode() * 1000
        spec = omniglot.ARCHIVES[name]
        monkeypatch.setitem(
            omniglot.ARCHIVES, name, spec._replace(md5=hashlib.md5(payloads[url]).hexdigest())
        )
    server = FakeServer(payloads)
    root = download_omniglot(tmp_path / "data", opener=server)
    assert root == tmp_path / "data"
    assert sorted(server.requested) == sorted(payloads)
    assert sorted(p.name for p in root.iterdir()) == [
        "images_background.zip",
        "images_evaluation.zip",
    ]  # no temp left
    assert (root / "images_background.zip").read_bytes() == payloads[official_urls()["images_background"]]
    # Existing archives are kept, not fetched again.
    server.requested.clear()
    download_omniglot(root, opener=server)
    assert server.requested == []


def test_download_bad_checksum_leaves_nothing(tmp_path: Path) -> None:
    server = FakeServer({url: b"tampered" for url in official_urls().values()})
    with pytest.raises(
        DataIntegrityError, match="md5 .* expected 68d2efa1b9178cc56df9314c21c6e718.*nothing was saved"
    ):
        download_omniglot(tmp_path, opener=server)
    assert list(tmp_path.iterdir()) == []


def test_download_offline_is_a_clear_error(tmp_path: Path) -> None:
    def offline(url: str):
        raise urllib.error.URLError("no network")

    with pytest.raises(DataNotFoundError, match="could not download .*images_background.zip.*by hand"):
        download_omniglot(tmp_path, opener=offline)
    assert list(tmp_path.iterdir()) == []


# ------------------------------------------------------------------------------ the real data

# sha256 of the sorted names of the 423 Vinyals meta-test characters, joined by "\n".
VINYALS_TEST_DIGEST = "cd7a4fc76e0d3b993ca34d27c28fdaaad7022606473da6c78ce24218787a9ab4"
# The same for the 423 meta-test characters of the "random" split.
RANDOM_TEST_DIGEST = "28c2f68d0a64d524cbfd6a744a065ddbcf86f6f1cad55e50a61f9eb56ea260e4"


@pytest.fixture(scope="module")
def shared(omniglot, omniglot_dir, omniglot_cache) -> tuple[FewShotDataset, FewShotDataset]:
    """Both splits of the real data (see conftest.py for where it is looked for)."""
    return omniglot, load_omniglot(omniglot_dir, "lake", cache_dir=omniglot_cache)


def characters_of(data: FewShotDataset, ids: torch.Tensor, rotated: bool) -> set[str]:
    return {data.class_names[i].rsplit("/", 1)[0] if rotated else data.class_names[i] for i in ids.tolist()}


@pytest.mark.data
def test_shared_vinyals_split(shared) -> None:
    data, _ = shared
    assert data.x.shape == (129_840, 1, 28, 28) and data.x.dtype == torch.uint8
    assert [s.numel() for s in data.splits] == [1028 * 4, 172 * 4, 423 * 4]
    for a, b in ((0, 1), (0, 2), (1, 2)):
        assert not set(data.splits[a].tolist()) & set(data.splits[b].tolist())
    assert torch.bincount(data.y).eq(20).all() and data.num_classes == 1623 * 4
    train, val, test = (characters_of(data, s, rotated=True) for s in data.splits)
    assert [len(train), len(val), len(test)] == [1028, 172, 423]
    assert hashlib.sha256("\n".join(sorted(test)).encode()).hexdigest() == VINYALS_TEST_DIGEST
    assert (
        "images_evaluation/Gurmukhi/character41" in train and "images_evaluation/Gurmukhi/character42" in test
    )
    assert "images_background/Bengali/character46" in val and "images_evaluation/ULOG/character26" in test
    assert "images_evaluation/Glagolitic/character01" in train
    # Ink is the minority of pixels: about 1/12 of a 28x28 Omniglot image after resizing.
    assert 10 < data.x[:2000].float().mean() < 40

    sampler = data.sampler("test", ways=20, shots=5, queries=15, seed=0)
    batch = sampler.sample(2)
    assert batch.support_x.shape == (2, 100, 1, 28, 28) and batch.query_x.shape == (2, 300, 1, 28, 28)
    assert batch.support_x.dtype == torch.float32 and batch.query_y.shape == (2, 300)
    _, classes = sampler.sample_indices(16)
    assert set(classes.flatten().tolist()) <= set(data.splits.test.tolist())


@pytest.mark.data
def test_shared_lake_split(shared) -> None:
    _, data = shared
    assert data.x.shape == (32_460, 1, 28, 28)
    assert [s.numel() for s in data.splits] == [792, 172, 659]
    train, val, test = (characters_of(data, s, rotated=False) for s in data.splits)
    assert not (train & val) and not (train & test) and not (val & test)
    assert all(c.startswith("images_background/") for c in train | val)
    assert all(c.startswith("images_evaluation/") for c in test)
    assert torch.bincount(data.y).eq(20).all()


@pytest.mark.data
def test_shared_random_split(omniglot_dir, omniglot_cache) -> None:
    data = load_omniglot(omniglot_dir, "random", cache_dir=omniglot_cache)
    assert data.x.shape == (129_840, 1, 28, 28)
    train, val, test = (characters_of(data, s, rotated=True) for s in data.splits)
    assert [len(train), len(val), len(test)] == [1100, 100, 423]
    assert not (train & val) and not (train & test) and not (val & test)
    assert hashlib.sha256("\n".join(sorted(test)).encode()).hexdigest() == RANDOM_TEST_DIGEST
    # Drawn without regard to alphabet: every meta-test alphabet also has meta-train characters,
    # and both archives give characters to both parts.
    alphabet = lambda characters: {c.split("/")[1] for c in characters}  # noqa: E731
    assert alphabet(test) <= alphabet(train) and len(alphabet(test)) == 50
    for archive in ("images_background/", "images_evaluation/"):
        assert any(c.startswith(archive) for c in train) and any(c.startswith(archive) for c in test)
