"""Real image datasets of the shared data folder as uint8 arrays (see ``MANIFEST.md``).

Every dataset comes back as an :class:`ArrayDataset`: ``images`` uint8 ``[N, H, W]`` (grey) or
``[N, H, W, 3]`` (RGB), ``labels`` int64 ``[N]`` and ``class_names``. Grey datasets all show
bright strokes on a dark background (Omniglot is inverted to match MNIST/USPS). Splits are the
ones shipped (``train``/``test``) or ``all`` where a dataset has no official split.

Example:
    >>> from spider.zoo import load_dataset
    >>> mnist = load_dataset("mnist", "test")    # images [10000, 28, 28], labels [10000]
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from spider.errors import SpiderError
from spider.registry import Registry
from spider.zoo.manifest import data_file, resolve_data_dir

DIGITS = tuple(str(d) for d in range(10))
FASHION_CLASSES = ("t-shirt/top", "trouser", "pullover", "dress", "coat",
                   "sandal", "shirt", "sneaker", "bag", "ankle boot")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
ANIMAL_CLASSES = ("bear", "bird", "cat", "cow", "dog",
                  "elephant", "giraffe", "horse", "sheep", "zebra")
OMNIGLOT_SIZE = 105


@dataclass(frozen=True)
class ArrayDataset:
    """Images and integer labels of one split of one dataset."""

    name: str
    split: str
    images: np.ndarray  # uint8 [N, H, W] grey or [N, H, W, 3] RGB
    labels: np.ndarray  # int64 [N], in range(len(class_names))
    class_names: tuple[str, ...]

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def channels(self) -> int:
        return 1 if self.images.ndim == 3 else int(self.images.shape[-1])

    def subset(self, rows: np.ndarray) -> ArrayDataset:
        """The samples at integer ``rows`` (same class list)."""
        rows = np.asarray(rows, dtype=np.int64)
        return ArrayDataset(self.name, self.split, self.images[rows], self.labels[rows],
                            self.class_names)


@dataclass(frozen=True)
class DatasetSpec:
    name: str
    splits: tuple[str, ...]
    load: Callable[[str, Path, bool], tuple[np.ndarray, np.ndarray]]  # (split, root, verify)
    class_names: Callable[[np.ndarray], tuple[str, ...]]
    file: str | None  # relative to the data folder; None when a package ships the data


DATASETS: Registry[DatasetSpec] = Registry("dataset")


def _npz(relative: str, root: Path, verify: bool) -> np.lib.npyio.NpzFile:
    return np.load(data_file(relative, root, verify=verify), allow_pickle=False)


def _split_arrays(relative: str) -> Callable[[str, Path, bool], tuple[np.ndarray, np.ndarray]]:
    def load(split: str, root: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
        with _npz(relative, root, verify) as arrays:
            return arrays[f"x_{split}"], arrays[f"y_{split}"]

    return load


def _whole_arrays(relative: str) -> Callable[[str, Path, bool], tuple[np.ndarray, np.ndarray]]:
    def load(split: str, root: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
        with _npz(relative, root, verify) as arrays:
            return arrays["x"], arrays["y"]

    return load


def _omniglot(relative: str) -> Callable[[str, Path, bool], tuple[np.ndarray, np.ndarray]]:
    def load(split: str, root: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
        with _npz(relative, root, verify) as arrays:
            packed, labels = arrays["images"], arrays["labels"]
        # Bits are True on the white paper; invert so strokes are bright like MNIST.
        paper = np.unpackbits(packed, axis=-1)[..., :OMNIGLOT_SIZE]
        images = ((1 - paper) * 255).astype(np.uint8)
        return images.reshape(-1, OMNIGLOT_SIZE, OMNIGLOT_SIZE), labels.reshape(-1)

    return load


class _SecondBatch:
    """Loader of a second-batch file: ``x``/``y`` is the train split, ``x_test``/``y_test`` the
    test split where the source has one; class names are read from the file itself (no pickles).
    ``invert`` turns dark strokes on white paper bright on dark, the convention of every grey
    dataset here."""

    def __init__(self, relative: str, invert: bool = False) -> None:
        self.relative, self.invert, self.names = relative, invert, ()

    def __call__(self, split: str, root: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
        suffix = "_test" if split == "test" else ""
        with _npz(self.relative, root, verify) as arrays:
            images, labels = arrays[f"x{suffix}"], arrays[f"y{suffix}"]
            # WordNet-style "goldfish, Carassius auratus" -> "goldfish"
            self.names = tuple(str(n).split(",")[0] for n in arrays["class_names"])
        return (255 - images if self.invert else images), labels

    def class_names(self, labels: np.ndarray) -> tuple[str, ...]:
        return self.names


def _sklearn_digits(split: str, root: Path, verify: bool) -> tuple[np.ndarray, np.ndarray]:
    from sklearn.datasets import load_digits

    digits = load_digits()
    images = np.round(digits.images * (255.0 / 16.0)).astype(np.uint8)  # 0..16 -> 0..255
    return images, digits.target


def register_dataset(name: str, splits: tuple[str, ...], load, class_names, file=None) -> None:
    DATASETS.add(name, DatasetSpec(name, splits, load, class_names, file), file=file)


def _fixed(names: tuple[str, ...]) -> Callable[[np.ndarray], tuple[str, ...]]:
    return lambda labels: names


def _numbered(prefix: str) -> Callable[[np.ndarray], tuple[str, ...]]:
    return lambda labels: tuple(f"{prefix}{i:03d}" for i in range(int(labels.max()) + 1))


register_dataset("mnist", ("train", "test"), _split_arrays("datasets/mnist.npz"),
                 _fixed(DIGITS), "datasets/mnist.npz")
register_dataset("fashion_mnist", ("train", "test"), _split_arrays("datasets/fashion_mnist.npz"),
                 _fixed(FASHION_CLASSES), "datasets/fashion_mnist.npz")
register_dataset("cifar10", ("train", "test"), _split_arrays("datasets/cifar10.npz"),
                 _fixed(CIFAR10_CLASSES), "datasets/cifar10.npz")
register_dataset("usps", ("train", "test"), _split_arrays("datasets/usps.npz"),
                 _fixed(DIGITS), "datasets/usps.npz")
register_dataset("animal_mnist", ("all",), _whole_arrays("datasets/animal_mnist.npz"),
                 _fixed(ANIMAL_CLASSES), "datasets/animal_mnist.npz")
register_dataset("omniglot_background", ("all",), _omniglot("datasets/omniglot_background.npz"),
                 _numbered("character"), "datasets/omniglot_background.npz")
register_dataset("omniglot_evaluation", ("all",), _omniglot("datasets/omniglot_evaluation.npz"),
                 _numbered("character"), "datasets/omniglot_evaluation.npz")
# Second batch (MANIFEST.md): more domains for pool datasets and targets.
for _name, _file, _splits, _invert in (
    ("tiny_imagenet", "datasets/tiny_imagenet200.npz", ("train", "test"), False),
    ("gtsrb", "datasets/gtsrb43.npz", ("train", "test"), False),
    ("cmaterdb", "datasets/cmaterdb_numerals.npz", ("train", "test"), True),
    ("chars74k", "datasets/chars74k_fnt.npz", ("train",), True),
    ("binary_alphadigits", "datasets/binary_alphadigits.npz", ("train",), False),
    ("orl_faces", "datasets/orl_faces.npz", ("train",), False),
):
    _loader = _SecondBatch(_file, _invert)
    register_dataset(_name, _splits, _loader, _loader.class_names, _file)
if importlib.util.find_spec("sklearn") is not None:  # optional: not a project dependency
    register_dataset("sklearn_digits", ("all",), _sklearn_digits, _fixed(DIGITS))


def list_datasets(pattern: str = "*") -> list[str]:
    return DATASETS.list(pattern)


def load_dataset(
    name: str, split: str = "train", *, data_dir: str | Path | None = None, verify: bool = True
) -> ArrayDataset:
    """Read one split of a registered dataset (cached; the arrays are read-only).

    Raises:
        RegistryError: unknown dataset.  SpiderError: unknown split.
        DataFileError: the ``.npz`` is missing or its sha256 differs from ``MANIFEST.md``.
    """
    spec = DATASETS.get(name)
    if split not in spec.splits:
        raise SpiderError(f"dataset {name!r} has no split {split!r}; splits: {', '.join(spec.splits)}")
    return _load_cached(name, split, str(resolve_data_dir(data_dir)), verify)


@lru_cache(maxsize=4)
def _load_cached(name: str, split: str, root: str, verify: bool) -> ArrayDataset:
    spec = DATASETS.get(name)
    images, labels = spec.load(split, Path(root), verify)
    images = np.ascontiguousarray(images, dtype=np.uint8)
    labels = np.ascontiguousarray(labels, dtype=np.int64)
    images.setflags(write=False)
    labels.setflags(write=False)
    return ArrayDataset(name, split, images, labels, spec.class_names(labels))
