"""The three small digit CNNs (MNIST, USPS, SVHN) of ``weights/digit_cnn/`` and the Fashion-MNIST CNN.

Each is ``features`` (an ``nn.Sequential``) -> flatten -> ``classifier`` (an ``nn.Sequential``),
with module indices matching the checkpoints' state_dict keys exactly (ReLU, pooling and dropout
hold no weights but occupy indices). Features are the hidden layer after its ReLU, i.e. the input
of the last linear layer.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from spider.zoo.datasets import FASHION_CLASSES
from spider.zoo.model_registry import ZooNet, load_state_dict_strict, read_torch_state_dict, register_zoo_model

DIGITS = tuple(str(d) for d in range(10))


class SequentialDigitCNN(ZooNet):
    """``features -> flatten -> classifier``; the penultimate output is ``classifier[:-1]``."""

    def __init__(self, features: nn.Sequential, classifier: nn.Sequential) -> None:
        super().__init__()
        self.features = features
        self.classifier = classifier

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        hidden = torch.flatten(self.features(x), 1)
        hidden = self.classifier[:-1](hidden)
        return hidden, self.classifier[-1](hidden)


def _two_conv_features() -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 0, 1, 2
        nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # 3, 4, 5
    )


def mnist_cnn_architecture() -> SequentialDigitCNN:
    """Input ``[N, 1, 28, 28]``; features ``[N, 128]``."""
    classifier = nn.Sequential(nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    return SequentialDigitCNN(_two_conv_features(), classifier)


def fashion_cnn_architecture() -> SequentialDigitCNN:
    """mnist_cnn's layers with an ``nn.Flatten`` at classifier index 0 (as its checkpoint's keys
    say); input ``[N, 1, 28, 28]``, features ``[N, 128]``."""
    classifier = nn.Sequential(nn.Flatten(), nn.Linear(64 * 7 * 7, 128), nn.ReLU(), nn.Linear(128, 10))
    return SequentialDigitCNN(_two_conv_features(), classifier)


def usps_cnn_architecture() -> SequentialDigitCNN:
    """Input ``[N, 1, 16, 16]``; features ``[N, 128]``."""
    features = nn.Sequential(
        nn.Conv2d(1, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(), nn.MaxPool2d(2),  # 0-3
        nn.Conv2d(32, 64, 3, padding=1), nn.BatchNorm2d(64), nn.ReLU(), nn.MaxPool2d(2),  # 4-7
    )
    classifier = nn.Sequential(
        nn.Dropout(0.3), nn.Linear(64 * 4 * 4, 128), nn.ReLU(), nn.Dropout(0.3), nn.Linear(128, 10)
    )
    return SequentialDigitCNN(features, classifier)


def _svhn_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),  # 0, 1, 2
        nn.Conv2d(cout, cout, 3, padding=1), nn.BatchNorm2d(cout), nn.ReLU(),  # 3, 4, 5
        nn.MaxPool2d(2),  # 6
    )


def svhn_cnn_architecture() -> SequentialDigitCNN:
    """Input ``[N, 3, 32, 32]``; features ``[N, 256]``."""
    features = nn.Sequential(_svhn_block(3, 32), _svhn_block(32, 64), _svhn_block(64, 128))
    classifier = nn.Sequential(
        nn.Dropout(0.5), nn.Linear(128 * 4 * 4, 256), nn.ReLU(), nn.Dropout(0.5), nn.Linear(256, 10)
    )
    return SequentialDigitCNN(features, classifier)


def _factory(architecture):
    def build(checkpoint: Path | None) -> SequentialDigitCNN:
        model = architecture()
        if checkpoint is not None:
            load_state_dict_strict(model, read_torch_state_dict(checkpoint), checkpoint)
        return model

    return build


register_zoo_model(
    "mnist_cnn", checkpoint="weights/digit_cnn/mnist.pth", input_size=(28, 28), in_chans=1,
    mean=(0.1307,), std=(0.3081,), feature_dim=128, num_classes=10, source="mnist",
    class_names=DIGITS, family="digit_cnn",
)(_factory(mnist_cnn_architecture))

register_zoo_model(
    "usps_cnn", checkpoint="weights/digit_cnn/usps.pth", input_size=(16, 16), in_chans=1,
    mean=(0.2471,), std=(0.2994,), feature_dim=128, num_classes=10, source="usps",
    class_names=DIGITS, family="digit_cnn",
)(_factory(usps_cnn_architecture))

register_zoo_model(
    "svhn_cnn", checkpoint="weights/digit_cnn/svhn.pth", input_size=(32, 32), in_chans=3,
    mean=(0.4377, 0.4438, 0.4728), std=(0.1980, 0.2010, 0.1970), feature_dim=256,
    num_classes=10, source="svhn", class_names=DIGITS, family="digit_cnn",
)(_factory(svhn_cnn_architecture))

# Second batch: a Fashion-MNIST CNN (Devadeut/FashionMnist-Classifier), Normalize(0.5, 0.5).
register_zoo_model(
    "fashion_mnist_cnn", checkpoint="weights/fashion_mnist_cnn_pytorch/fashion_mnist_cnn.pth",
    input_size=(28, 28), in_chans=1, mean=(0.5,), std=(0.5,), feature_dim=128, num_classes=10,
    source="fashion_mnist", class_names=FASHION_CLASSES, family="digit_cnn",
)(_factory(fashion_cnn_architecture))
