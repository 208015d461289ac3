"""Datasets for quantcore: loaded by name from local files, never downloaded.

``load_dataset(name, root=..., augment=..., image_size=...)`` returns a ``DataBundle`` (train and
val splits, class count, input shape, normalisation); ``list_datasets()`` describes the names;
``subset(dataset, fraction, seed=...)`` takes a seeded, class-balanced part of a split.
"""

from quantcore.data.builtin import list_datasets, load_dataset
from quantcore.data.bundle import DataBundle, DatasetInfo
from quantcore.data.subset import LabelledSubset, subset
from quantcore.data.tensors import repeatable

__all__ = [
    "DataBundle",
    "DatasetInfo",
    "LabelledSubset",
    "list_datasets",
    "load_dataset",
    "repeatable",
    "subset",
]
