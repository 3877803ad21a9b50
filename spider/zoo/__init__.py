"""The model zoo: architectures timm lacks (registered here), real datasets and their checksums.

Importing this package registers every built-in zoo model (CIFAR ResNets, digit CNNs, the Keras
face models and the second-batch Keras models ported to torch). ``create_zoo_model(name)`` loads one with verified weights from the
shared data folder (``SPIDER_DATA_DIR``); ``load_dataset(name, split)`` reads a real dataset.
"""

from spider.zoo import cifar_resnet, digit_cnn, keras_models, keras_xception  # noqa: F401  (registration)
from spider.zoo.datasets import ArrayDataset, list_datasets, load_dataset
from spider.zoo.manifest import DataFileError, data_file, manifest_checksums
from spider.zoo.model_registry import (
    ZooModelInfo,
    ZooNet,
    create_zoo_model,
    get_zoo_model_info,
    is_zoo_model,
    list_zoo_models,
    register_zoo_model,
)

__all__ = [
    "ArrayDataset",
    "DataFileError",
    "ZooModelInfo",
    "ZooNet",
    "create_zoo_model",
    "data_file",
    "get_zoo_model_info",
    "is_zoo_model",
    "list_datasets",
    "list_zoo_models",
    "load_dataset",
    "manifest_checksums",
    "register_zoo_model",
]
