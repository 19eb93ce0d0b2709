"""Property-based tests (hypothesis): the episode sampler, the config parser and the image loaders
given random inputs either refuse them with a clear error or give exactly what they promise.

- sampler: uneven class sizes, a random split of the classes, random ways / shots / queries: a
  ValueError naming the problem, or episodes of the right shapes, labels 0..N-1 balanced, support
  and query disjoint, every example from a class of the split, one class per label;
- configs: random keys and values through `--set` and through a YAML file: a ConfigError, or a
  config whose saved config.yaml reads back as the same config;
- images: random arrays of random dtype, mode and size encoded as PNG, JPEG, TIFF or BMP, damaged
  files and random bytes: a DataIntegrityError, or an image of the requested shape whose floats
  lie in [0, 1] and which matches a reference conversion of the array.
"""

import io

import numpy as np
import pytest
import torch
import yaml
from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st
from PIL import Image

from metalab.config import FIELDS, Config, ConfigError, config_from_dict, load_config, parse_override
from metalab.data import DataIntegrityError
from metalab.data.dataset import to_float
from metalab.data.images import decode_image
from metalab.tasks import EpisodeSampler

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------------------ the sampler


@FAST
@given(
    counts=st.lists(st.one_of(st.integers(4, 8), st.integers(0, 8)), min_size=1, max_size=9),
    split=st.one_of(
        st.just([]),
        st.lists(st.integers(0, 9), max_size=6, unique=True),
        st.lists(st.integers(0, 10), max_size=6),
    ),
    ways=st.one_of(st.integers(1, 4), st.integers(-1, 6)),
    shots=st.one_of(st.integers(1, 2), st.integers(-1, 4)),
    queries=st.one_of(st.integers(0, 2), st.integers(-1, 4)),
    tasks=st.integers(1, 4),
    seed=st.integers(0, 2**31 - 1),
)
def test_the_sampler_refuses_or_draws_valid_episodes(counts, split, ways, shots, queries, tasks, seed):
    # Example i has value i, so that every drawn example tells where it came from.
    y = torch.cat([torch.full((n,), c) for c, n in enumerate(counts)]).long()
    x = torch.arange(len(y), dtype=torch.float64)[:, None]
    classes = split or None
    allowed = [c for c, n in enumerate(counts) if n] if classes is None else split  # None: those present
    have = {c: counts[c] if c < len(counts) else 0 for c in allowed}
    possible = (
        ways >= 1
        and shots >= 1
        and queries >= 0
        and len(set(allowed)) == len(allowed)
        and ways <= len(allowed)
        and all(n >= shots + queries for n in have.values())
    )
    if not possible:
        with pytest.raises(ValueError, match="ways|shots|queries|classes|examples|duplicates"):
            EpisodeSampler(x, y, ways=ways, shots=shots, queries=queries, classes=classes, seed=seed)
        event("refused")
        return
    event("drawn")
    batch = EpisodeSampler(x, y, ways=ways, shots=shots, queries=queries, classes=classes, seed=seed).sample(
        tasks
    )
    n, k, q = ways, shots, queries
    assert batch.support_x.shape == (tasks, n * k, 1) and batch.query_x.shape == (tasks, n * q, 1)
    assert torch.equal(batch.support_y, torch.arange(n).repeat_interleave(k).expand(tasks, -1))
    assert torch.equal(batch.query_y, torch.arange(n).repeat_interleave(q).expand(tasks, -1))
    for t in range(tasks):
        support = batch.support_x[t, :, 0].long()
        query = batch.query_x[t, :, 0].long()
        assert not set(support.tolist()) & set(query.tolist())  # disjoint
        assert len(set(support.tolist())) == n * k and len(set(query.tolist())) == n * q
        drawn = []
        for label in range(n):
            mine = torch.cat([support[batch.support_y[t] == label], query[batch.query_y[t] == label]])
            origin = set(y[mine].tolist())
            assert len(origin) == 1  # one class per label
            drawn += origin
        assert len(set(drawn)) == n and set(drawn) <= set(allowed)  # N distinct classes of the split


# ------------------------------------------------------------------------------------ the config parser

KEYS = sorted(set(FIELDS) - {"plugins"}) + ["inner_lr", "inner_steps", "first_order", "fce", "not_a_key"]
WORDS = st.sampled_from(
    "off on yes no true False null ~ auto cpu cuda:0 mps maml protonet sine folder csv omniglot lake "
    "vinyals adam sgd cosine step bf16 fp16 1e-3 1e39 .nan -.inf [40,40] [1,-2] [] {a:1} 'quoted' a:b [ ] "
    "0x10 010 1_000 label 3.5 -1 0".split()
)
VALUES = st.one_of(
    WORDS,
    st.integers(-5, 100_000).map(str),
    st.floats(allow_nan=True, allow_infinity=True).map(repr),
    st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=12),
)


def test_only_true_and_false_are_booleans(tmp_path):
    """YAML 1.1 reads on/off/yes/no as booleans; configs read them as the strings they are, so that
    `kernels: off` (and `--kernels off`, `--set kernels=off`) means the key's value "off"."""
    path = tmp_path / "c.yaml"
    path.write_text("kernels: off\ncsv_label: yes\nfirst_order: true\n")
    values = yaml.safe_load(path.read_text())
    assert values["kernels"] is False and values["csv_label"] is True  # what plain YAML would give
    c = load_config(path)
    assert (c.kernels, c.csv_label, c.options["first_order"]) == ("off", "yes", True)
    assert parse_override("kernels=off") == ("kernels", "off")
    assert config_from_dict({"kernels": "off"}).resolved().kernels == "off"
    with pytest.raises(ConfigError, match="'first_order' must be true or false, got 'yes'"):
        config_from_dict({"first_order": parse_override("first_order=yes")[1]}).resolved()


def _round_trip(c: Config, tmp_path) -> None:
    """The config as a run saves it (config.yaml) reads back as the same config."""
    saved = tmp_path / "config.yaml"
    saved.write_text(yaml.safe_dump(c.to_dict(), sort_keys=False))
    again = load_config(saved).resolved(saved=True)
    assert again.to_dict() == c.to_dict()


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=VALUES, algorithm=st.sampled_from(["maml", "protonet", "matching"]))
def test_a_set_override_is_refused_or_round_trips(key, value, algorithm, tmp_path):
    base = Config(algorithm=algorithm, benchmark="sine" if algorithm == "maml" else "folder", data_dir="d")
    try:
        name, parsed = parse_override(f"{key}={value}")
        c = config_from_dict({name: parsed}, base).resolved()
    except ConfigError as e:
        assert str(e) and "\n" not in str(e)
        event("refused")
        return
    event("round trip")
    _round_trip(c, tmp_path)


@settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(key=st.sampled_from(KEYS), value=VALUES)
def test_a_yaml_key_is_refused_or_round_trips(key, value, tmp_path):
    assume("\n" not in value and "\r" not in value)
    path = tmp_path / "c.yaml"
    path.write_text(f"{key}: {value}\n", encoding="utf-8")
    try:
        c = load_config(path).resolved()
    except ConfigError as e:
        assert str(e)
        event("refused")
        return
    event("round trip")
    _round_trip(c, tmp_path)


# ------------------------------------------------------------------------------------ the image loaders

# (PIL mode, numpy dtype, channels of the array, the formats that store it)
MODES = [
    ("L", np.uint8, 1, ("PNG", "JPEG", "TIFF", "BMP")),
    ("RGB", np.uint8, 3, ("PNG", "JPEG", "TIFF", "BMP")),
    ("RGBA", np.uint8, 4, ("PNG", "TIFF")),
    ("LA", np.uint8, 2, ("PNG",)),
    ("1", np.bool_, 1, ("PNG", "TIFF", "BMP")),
    ("I;16", np.uint16, 1, ("PNG", "TIFF")),
    ("F", np.float32, 1, ("TIFF",)),
]


@st.composite
def images(draw):
    mode, dtype, channels, formats = draw(st.sampled_from(MODES))
    fmt = draw(st.sampled_from(formats))
    h, w = draw(st.integers(1, 24)), draw(st.integers(1, 24))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if dtype is np.bool_:
        array = rng.random((h, w)) > 0.5
    elif dtype is np.float32:
        array = rng.random((h, w)).astype(np.float32)  # [0, 1]: read as 8 bits by scaling
    else:
        high = 65535 if dtype is np.uint16 else 255
        array = rng.integers(0, high + 1, (h, w, channels) if channels > 1 else (h, w)).astype(dtype)
    img = Image.fromarray(array)
    assert img.mode == mode
    buf = io.BytesIO()
    img.save(buf, format=fmt)
    return mode, array, fmt, buf.getvalue()


def _reference(mode: str, array: np.ndarray, size: int, channels: int) -> np.ndarray:
    """The 8-bit image the array shows, from the array itself: alpha over white, 16 bits by 257,
    [0, 1] floats by 255; then converted and resized as every image is (uint8 (C, S, S))."""
    if mode in ("RGBA", "LA"):
        colour, alpha = array[..., :-1].astype(np.float64), array[..., -1:].astype(np.float64) / 255
        eight = np.rint(colour * alpha + 255 * (1 - alpha)).astype(np.uint8)
        eight = eight[..., 0] if mode == "LA" else eight
    elif mode == "1":
        eight = array.astype(np.uint8) * 255
    elif mode == "I;16":
        eight = np.rint(array / 257.0).astype(np.uint8)
    elif mode == "F":
        eight = np.rint(array.astype(np.float64) * 255).astype(np.uint8)
    else:
        eight = array
    img = Image.fromarray(eight, "RGB" if eight.ndim == 3 else "L")
    out = np.asarray(img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.LANCZOS))
    return out[None] if channels == 1 else out.transpose(2, 0, 1)


@FAST
@given(image=images(), size=st.integers(1, 40), channels=st.sampled_from([1, 3]), invert=st.booleans())
def test_an_encoded_array_reads_as_the_image_it_shows(image, size, channels, invert):
    mode, array, fmt, data = image
    got = decode_image(data, size, channels, invert, name="x")
    assert got.dtype == np.uint8 and got.shape == (channels, size, size)
    floats = to_float(torch.tensor(got))
    assert 0 <= floats.min() and floats.max() <= 1
    if fmt == "JPEG":  # lossy: the reference is the decoded file, prepared the plain way
        with Image.open(io.BytesIO(data)) as img:
            want = np.asarray(
                img.convert("L" if channels == 1 else "RGB").resize((size, size), Image.LANCZOS)
            )
        want = want[None] if channels == 1 else want.transpose(2, 0, 1)
    else:
        want = _reference(mode, array, size, channels)
    want = 255 - want if invert else want
    # Compositing and the 16-bit and float scalings round once more than the reference: 1 level.
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1


@FAST
@given(data=st.binary(max_size=300))
def test_random_bytes_are_refused_clearly(data):
    try:
        got = decode_image(data, 8, 1, name="upload.png")
    except DataIntegrityError as e:
        assert "upload.png" in str(e)
        return
    assert got.shape == (1, 8, 8)  # the rare bytes that do make an image


@FAST
@given(
    image=images(),
    cut=st.one_of(st.just(1.0), st.floats(0, 1)),
    flips=st.lists(st.tuples(st.floats(0, 1), st.integers(1, 255)), max_size=3),
)
def test_a_damaged_image_file_is_refused_or_read_whole(image, cut, flips):
    _, _, _, data = image
    damaged = bytearray(data[: max(1, int(len(data) * cut))] if cut < 1 else data)
    for where, mask in flips:
        damaged[int(where * (len(damaged) - 1))] ^= mask
    try:
        got = decode_image(bytes(damaged), 12, 3, name="photo.png")
    except DataIntegrityError as e:
        assert "photo.png" in str(e)
        event("refused")
        return
    event("read")
    assert got.shape == (3, 12, 12) and got.dtype == np.uint8
