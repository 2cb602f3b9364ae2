"""Data: what each dataset is (``specs``), reading and loading it (``datasets``), fetching it into the
cache (``fetch``), and images as uint8 grids (``images``).  ``python -m minisdit.data fetch NAME``."""
from .datasets import load_dataset, parse_idx, read_cifar_archive, read_idx, resize_images, to_model_range
from .fetch import Source, fetch_dataset, local_copy_source, mirror_source, sources_for
from .specs import (CIFAR_ARCHIVE, DATASET_SPECS, DATASETS, ENV_DATA_DIR, SPLITS, DataIntegrityError,
                    DatasetNotFoundError, DatasetSpec, FetchError, data_root, dataset_dir, dataset_spec, md5_of_file,
                    verify_file)

__all__ = ["load_dataset", "to_model_range", "resize_images", "read_idx", "parse_idx", "read_cifar_archive",
           "fetch_dataset", "sources_for", "Source", "mirror_source", "local_copy_source", "dataset_spec",
           "dataset_dir", "data_root", "md5_of_file", "verify_file", "DatasetSpec", "DATASET_SPECS", "DATASETS",
           "SPLITS", "ENV_DATA_DIR", "CIFAR_ARCHIVE", "DatasetNotFoundError", "DataIntegrityError", "FetchError"]
