"""Real data sets, loaded once into memory (images as uint8 tensors) with disjoint class splits."""
from .folder import load_image_folder, read_image
from .omniglot import (
    DataIntegrityError,
    DataNotFoundError,
    FewShotDataset,
    download_omniglot,
    load_omniglot,
    load_omniglot_archive,
    read_omniglot_zip,
    to_float,
)
from .tabular import RowTasks, TabularData, load_csv

__all__ = [
    "DataIntegrityError",
    "DataNotFoundError",
    "FewShotDataset",
    "download_omniglot",
    "load_omniglot",
    "load_omniglot_archive",
    "read_omniglot_zip",
    "to_float",
    "load_image_folder",
    "read_image",
    "load_csv",
    "TabularData",
    "RowTasks",
]
