"""Source domains: which kind of images a dataset holds, so that a zoo can say what its PTMs know.

A PTM's domains are those of the datasets it was trained on (a zoo model's ``source``, a
pre-trained spec's ``sources``). The keys are the names used as sources: the registered datasets of
:mod:`spider.zoo.datasets` and the training sets of the real weights (ImageNet, FER2013, ...). Two
datasets share a domain when their images look alike to a human (photos of objects, handwritten
digits, ...), not when they share classes.
"""

from __future__ import annotations

from collections.abc import Iterable

from spider.errors import SpiderError

__all__ = ["SOURCE_DOMAINS", "source_domain", "source_domains"]

SOURCE_DOMAINS: dict[str, str] = {
    # natural photos of objects and animals
    "cifar10": "photos", "cifar100": "photos", "tiny_imagenet": "photos", "imagenet": "photos",
    # photos of people (person / no person)
    "visual_wake_words": "people",
    # faces
    "fer2013": "faces", "kdef": "faces", "imdb_gender": "faces", "orl_faces": "faces",
    # handwritten digits (Latin and other scripts)
    "mnist": "handwritten digits", "usps": "handwritten digits", "cmaterdb": "handwritten digits",
    "sklearn_digits": "handwritten digits",
    # photographed house numbers
    "svhn": "street digits",
    # handwritten characters and letters
    "omniglot_background": "handwritten characters", "omniglot_evaluation": "handwritten characters",
    "emnist_byclass": "handwritten characters",
    # printed (font / bitmap) characters
    "chars74k": "printed characters", "binary_alphadigits": "printed characters",
    "quickdraw": "sketches",
    "gtsrb": "traffic signs",
    "sign_mnist": "hand signs",
    "fashion_mnist": "clothing",
    "animal_mnist": "silhouettes",
}


def source_domain(source: str) -> str:
    """The domain of one source dataset; a one-line error for an unknown name."""
    try:
        return SOURCE_DOMAINS[source]
    except KeyError:
        raise SpiderError(f"source dataset {source!r} has no domain in spider.zoo.domains.SOURCE_DOMAINS "
                          f"(known: {', '.join(sorted(SOURCE_DOMAINS))})") from None


def source_domains(sources: Iterable[str]) -> tuple[str, ...]:
    """The sorted distinct domains of ``sources`` (one for a specialist, several for a generalist)."""
    return tuple(sorted({source_domain(s) for s in sources}))
