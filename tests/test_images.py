"""Image files of more than 8 bits, float images and palette images are read as the 8-bit images
they show, or refused with the reason."""

import numpy as np
import pytest
from PIL import Image

from metalab.data import DataIntegrityError, read_image


def ramp(dtype, high):
    return (np.linspace(0, high, 24 * 24).reshape(24, 24)).astype(dtype)


def test_a_16_bit_png_reads_as_the_8_bit_image_it_shows(tmp_path):
    wide = ramp(np.uint16, 65535)
    Image.fromarray(wide).save(tmp_path / "wide.png")
    Image.fromarray((wide / 257).round().astype(np.uint8)).save(tmp_path / "narrow.png")
    assert Image.open(tmp_path / "wide.png").mode.startswith("I")
    got, want = read_image(tmp_path / "wide.png", 24), read_image(tmp_path / "narrow.png", 24)
    assert np.abs(got.astype(int) - want.astype(int)).max() <= 1 and got.max() == 255 and got.min() == 0


def test_float_images_in_0_1_or_0_255_read_as_8_bits_and_other_ranges_are_refused(tmp_path):
    unit = ramp(np.float32, 1.0)
    Image.fromarray(unit, "F").save(tmp_path / "unit.tiff")
    Image.fromarray(unit * 255, "F").save(tmp_path / "bytes.tiff")
    expected = (unit * 255).round()
    for name in ("unit.tiff", "bytes.tiff"):
        assert np.abs(read_image(tmp_path / name, 24)[0] - expected).max() <= 1, name
    Image.fromarray(unit * 4000, "F").save(tmp_path / "counts.tiff")
    with pytest.raises(DataIntegrityError, match=r"counts\.tiff: mode F with values up to 4000"):
        read_image(tmp_path / "counts.tiff", 24)
    nan = unit.copy()
    nan[3, 3] = np.nan
    Image.fromarray(nan, "F").save(tmp_path / "nan.tiff")
    with pytest.raises(DataIntegrityError, match=r"nan\.tiff: mode F with values in \[nan"):
        read_image(tmp_path / "nan.tiff", 24)


def test_a_palette_image_reads_as_the_colours_it_shows(tmp_path):
    rgb = np.zeros((24, 24, 3), np.uint8)
    rgb[:, 12:] = (200, 40, 10)
    Image.fromarray(rgb).save(tmp_path / "rgb.png")
    Image.fromarray(rgb).convert("P", palette=Image.Palette.ADAPTIVE, colors=4).save(tmp_path / "p.png")
    assert Image.open(tmp_path / "p.png").mode == "P"
    for channels in (1, 3):
        a, b = read_image(tmp_path / "p.png", 24, channels), read_image(tmp_path / "rgb.png", 24, channels)
        assert np.abs(a.astype(int) - b.astype(int)).max() <= 2
