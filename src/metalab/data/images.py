"""Reading one image file the way every image source and `metalab predict` prepare it.

Every image is prepared once, the same way for a folder of images and in `metalab predict`
(`read_image`):

1. turned upright by its EXIF orientation (photos from phones);
2. transparency composited onto white;
3. converted to greyscale ("L", 1 channel) or RGB (3 channels);
4. resized to `image_size` x `image_size` (stretched, not cropped) with a Lanczos filter;
5. optionally inverted (255 - pixel). User images are stored as they are by default: dark strokes
   stay dark. Omniglot's loader inverts its black-on-white PNGs so that ink is 255, and a checkpoint
   trained on Omniglot records `invert: true`, so that prediction inverts a user's drawings alike.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps

from .dataset import DataIntegrityError

__all__ = ["IMAGE_EXTENSIONS", "list_images", "read_image"]

# Extensions of the formats Pillow can decode (registered_extensions also lists save-only formats).
IMAGE_EXTENSIONS = frozenset(ext for ext, fmt in Image.registered_extensions().items() if fmt in Image.OPEN)


def list_images(folder: str | os.PathLike) -> list[Path]:
    """The image files directly inside `folder` (by extension, hidden files skipped), sorted by name."""
    return sorted(
        p
        for p in Path(folder).iterdir()
        if p.is_file() and not p.name.startswith(".") and p.suffix.lower() in IMAGE_EXTENSIONS
    )


def read_image(
    path: str | os.PathLike, image_size: int = 28, channels: int = 1, invert: bool = False
) -> np.ndarray:
    """One image file -> uint8 of shape (channels, image_size, image_size), prepared as the module says.

    Raises:
        DataIntegrityError: the file cannot be decoded; the message names it.
    """
    if channels not in (1, 3):
        raise ValueError(f"channels must be 1 (greyscale) or 3 (RGB), got {channels}")
    try:
        with Image.open(path) as img:
            img.load()  # Pillow decodes lazily; force it so that a truncated file fails here
            img = ImageOps.exif_transpose(img)
            if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
                rgba = img.convert("RGBA")
                img = Image.alpha_composite(Image.new("RGBA", rgba.size, (255, 255, 255, 255)), rgba)
            # Convert first, then resize: resizing a 1-bit image would fall back to nearest
            # neighbour (the same order as the Omniglot loader, so its PNGs come out identical).
            mode = "L" if channels == 1 else "RGB"
            small = img.convert(mode).resize((image_size, image_size), Image.LANCZOS)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as err:
        raise DataIntegrityError(f"cannot read image {path} ({type(err).__name__}: {err})") from err
    array = np.asarray(small, dtype=np.uint8)
    array = array[None] if channels == 1 else array.transpose(2, 0, 1)
    return 255 - array if invert else np.ascontiguousarray(array)
