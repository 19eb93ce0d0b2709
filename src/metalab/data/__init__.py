"""Real data sets, loaded once into memory as uint8 tensors with disjoint class splits."""
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

__all__ = [
    "DataIntegrityError",
    "DataNotFoundError",
    "FewShotDataset",
    "download_omniglot",
    "load_omniglot",
    "load_omniglot_archive",
    "read_omniglot_zip",
    "to_float",
]
