"""Real data sets, loaded once into memory (images as uint8 tensors) with disjoint class splits.

- `dataset`: `FewShotDataset`, what every source returns, `to_float` and the data errors;
- `images`: preparing one image (`read_image` from a file, `decode_image` from bytes), shared by the
  folder source, `metalab predict` and `metalab serve`;
- `store`: checksums, downloads, safe unpickling and the uint8 cache every loader shares;
- `omniglot`: the Omniglot archives, their cache, download and splits;
- `cifar`: CIFAR-10 (official tarball or JPEG zip) and CIFAR-100, in their official train/test split;
- `cifar_fewshot`, `mini_imagenet`, `tiered_imagenet`, `cub`, `fashion_mnist`: the few-shot data-set
  benchmarks in their published class splits; `catalog`: all of them, their sources and checksums;
- `augment`: crop, flip and colour jitter on batches of tensors;
- `folder`: a folder of images, one subfolder per class;
- `tabular`: a CSV file, as classification episodes or regression tasks.
"""

from .augment import standard_augment
from .cifar import Cifar, download_cifar10, download_cifar100, load_cifar10, load_cifar100
from .cifar_fewshot import load_cifar10_fewshot, load_cifar_fs, load_fc100
from .cub import download_cub, load_cub
from .dataset import DataIntegrityError, DataNotFoundError, FewShotDataset, to_float
from .fashion_mnist import download_fashion_mnist, load_fashion_mnist
from .folder import load_image_folder
from .images import decode_image, read_image
from .mini_imagenet import load_mini_imagenet
from .omniglot import download_omniglot, load_omniglot, load_omniglot_archive, read_omniglot_zip
from .tabular import RowTasks, TabularData, load_csv
from .tiered_imagenet import load_tiered_imagenet

__all__ = [
    "Cifar",
    "download_cifar10",
    "download_cifar100",
    "load_cifar10",
    "load_cifar100",
    "load_cifar10_fewshot",
    "load_cifar_fs",
    "load_fc100",
    "load_cub",
    "download_cub",
    "load_fashion_mnist",
    "download_fashion_mnist",
    "load_mini_imagenet",
    "load_tiered_imagenet",
    "standard_augment",
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
