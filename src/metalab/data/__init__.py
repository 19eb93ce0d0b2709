"""Real data sets, loaded once into memory (images as uint8 tensors) with disjoint class splits.

- `dataset`: `FewShotDataset`, what every source returns, `to_float` and the data errors;
- `images`: preparing one image (`read_image` from a file, `decode_image` from bytes), shared by the
  folder source, `metalab predict` and `metalab serve`;
- `store`: checksums, downloads, safe unpickling and the uint8 cache every loader shares;
- `omniglot`: the Omniglot archives, their cache, download and splits;
- `cifar`: CIFAR-10 (official tarball or JPEG zip) and CIFAR-100, in their official train/test split;
- `folder`: a folder of images, one subfolder per class;
- `tabular`: a CSV file, as classification episodes or regression tasks.
"""

from .cifar import Cifar, download_cifar10, download_cifar100, load_cifar10, load_cifar100
from .dataset import DataIntegrityError, DataNotFoundError, FewShotDataset, to_float
from .folder import load_image_folder
from .images import decode_image, read_image
from .omniglot import download_omniglot, load_omniglot, load_omniglot_archive, read_omniglot_zip
from .tabular import RowTasks, TabularData, load_csv

__all__ = [
    "Cifar",
    "download_cifar10",
    "download_cifar100",
    "load_cifar10",
    "load_cifar100",
    "DataIntegrityError",
    "DataNotFoundError",
    "FewShotDataset",
    "download_omniglot",
    "load_omniglot",
    "load_omniglot_archive",
    "read_omniglot_zip",
    "to_float",
    "load_image_folder",
    "decode_image",
    "read_image",
    "load_csv",
    "TabularData",
    "RowTasks",
]
