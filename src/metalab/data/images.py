"""Reading one image file the way every image source and `metalab predict` prepare it.

Every image is prepared once, the same way for a folder of images, in `metalab predict` (`read_image`,
from a file) and in `metalab serve` (`decode_image`, from uploaded bytes):

1. turned upright by its EXIF orientation (photos from phones);
2. 16-bit and 32-bit integer images scaled to 8 bits by their bit depth, float images from [0, 1]
   (or [0, 255]) to 8 bits; other ranges are refused with the range found;
3. transparency composited onto white, then converted to greyscale ("L", 1 channel) or RGB (3 channels);
4. resized to `image_size` x `image_size` (stretched, not cropped) with a Lanczos filter;
5. optionally inverted (255 - pixel). User images are stored as they are by default: dark strokes
   stay dark. Omniglot's loader inverts its black-on-white PNGs so that ink is 255, and a checkpoint
   trained on Omniglot records `invert: true`, so that prediction inverts a user's drawings alike.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from .dataset import DataIntegrityError

__all__ = [
    "IMAGE_EXTENSIONS",
    "ImageTooLargeError",
    "decode_image",
    "list_images",
    "pillow_error",
    "read_image",
]

# Extensions of the formats Pillow can decode (registered_extensions also lists save-only formats).
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


class ImageTooLargeError(DataIntegrityError):
    """An image with more pixels than a caller's limit (`decode_image(max_pixels=...)`)."""


def pillow_error(error: BaseException) -> str:
    """What went wrong decoding an image, in a few words (Pillow's "cannot identify image file"
    quotes the file object it was given)."""
    if isinstance(error, UnidentifiedImageError):
        return "not an image file Pillow can read"
    return f"{type(error).__name__}: {error}"


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside `folder` (by extension, hidden files skipped), sorted by name."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def _eight_bit(img: Image.Image, path) -> Image.Image:
    """Integer images of more than 8 bits and float images as 8-bit greyscale ("L"); Pillow's own
    conversion would clip them (a 16-bit image comes out almost all 255, a [0, 1] float one all 0)."""
    if not (img.mode.startswith("I") or img.mode == "F"):
        return img
    values = np.asarray(img, dtype=np.float64)
    low, high = (float(values.min()), float(values.max())) if values.size else (0.0, 0.0)
    if not (np.isfinite(low) and np.isfinite(high)) or low < 0:
        raise DataIntegrityError(f"cannot read image {path}: mode {img.mode} with values in [{low}, {high}]")
    if img.mode == "F" and high <= 1.0:
        values = values * 255.0
    elif img.mode.startswith("I;16") or (img.mode == "I" and 255 < high <= 65535):
        values = values / 257.0  # 65535 -> 255
    elif high > 255:
        raise DataIntegrityError(
            f"cannot read image {path}: mode {img.mode} with values up to {high:g} "
            "(expected 8 or 16 bits, or floats in [0, 1] or [0, 255])"
        )
    return Image.fromarray(np.rint(values).astype(np.uint8), "L")


def read_image(
    path: str | os.PathLike, image_size: int = 28, channels: int = 1, invert: bool = False
) -> np.ndarray:
    """One image file -> uint8 of shape (channels, image_size, image_size), prepared as the module says.

    Raises:
        DataIntegrityError: the file cannot be decoded; the message names it.
    """
    return _prepare(path, str(path), image_size, channels, invert)


def decode_image(
    data: bytes,
    image_size: int = 28,
    channels: int = 1,
    invert: bool = False,
    *,
    name: str = "image",
    max_pixels: int | None = None,
) -> np.ndarray:
    """Encoded image bytes (PNG, JPEG, ...) -> uint8 of shape (channels, image_size, image_size),
    prepared exactly as `read_image` prepares a file (`metalab serve` receives images this way).

    Args:
        name: how error messages name the image (e.g. an uploaded file's name).
        max_pixels: refuse images with more pixels than this (checked on the header, before decoding).

    Raises:
        ImageTooLargeError: the image has more than `max_pixels` pixels.
        DataIntegrityError: the bytes cannot be decoded; the message names the image.
    """
    return _prepare(io.BytesIO(data), name, image_size, channels, invert, max_pixels)


def _prepare(
    source, name: str, image_size: int, channels: int, invert: bool, max_pixels: int | None = None
) -> np.ndarray:
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    try:
        with Image.open(source) as img:
            width, height = img.size
            if max_pixels is not None and width * height > max_pixels:
                raise ImageTooLargeError(
                    f"image {name} is {width} x {height} pixels, more than the limit of {max_pixels:,}"
                )
            img.load()  # Pillow decodes lazily; force it so that a truncated file fails here
            img = _eight_bit(ImageOps.exif_transpose(img), name)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            # Convert first, then resize: resizing a 1-bit image would fall back to nearest
            # neighbour (the same order as the Omniglot loader, so its PNGs come out identical).
            mode = "L" if channels == 1 else "RGB"
            small = img.convert(mode).resize((image_size, image_size), Image.LANCZOS)
    except DataIntegrityError:
        raise  # too large, or a range refused by `_eight_bit`: with its own message
    # DecompressionBombWarning: an image beyond Pillow's size limit where warnings are errors (`metalab`).
    except (
        OSError,
        SyntaxError,
        ValueError,
        Image.DecompressionBombError,
        Image.DecompressionBombWarning,
    ) as err:
        raise DataIntegrityError(f"cannot read image {name} ({pillow_error(err)})") from err
    array = np.asarray(small, dtype=np.uint8)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return 255 - array if invert else np.ascontiguousarray(array)
