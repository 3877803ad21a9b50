"""CIFAR ResNet-20/32/44/56 (He et al. 2016, section 4.2) with option-A shortcuts.

Three stages of ``n`` basic blocks with 16/32/64 channels; a down-sampling shortcut takes every
second pixel and zero-pads the new channels (no parameters), which is why these checkpoints have
no shortcut weights. Features are the 64-d global average before the 64->10 linear head.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from spider.zoo.model_registry import ZooNet, load_state_dict_strict, read_torch_state_dict, register_zoo_model

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer",
                   "dog", "frog", "horse", "ship", "truck")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
CHECKPOINTS = {
    20: "weights/cifar10_resnet/resnet20-12fca82f.th",
    32: "weights/cifar10_resnet/resnet32-d509ac18.th",
    44: "weights/cifar10_resnet/resnet44-014dd654.th",
    56: "weights/cifar10_resnet/resnet56-4bfd9763.th",
}


class ZeroPadShortcut(nn.Module):
    """Option-A shortcut: stride-2 subsample, then zero-pad channels symmetrically."""

    def __init__(self, extra_channels: int) -> None:
        super().__init__()
        self.extra = extra_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        half = self.extra // 2
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, half, self.extra - half))


class BasicBlock(nn.Module):
    def __init__(self, in_planes: int, planes: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        needs_projection = stride != 1 or in_planes != planes
        self.shortcut = ZeroPadShortcut(planes - in_planes) if needs_projection else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(ZooNet):
    """Input float ``[N, 3, 32, 32]``; features ``[N, 64]``; logits ``[N, num_classes]``."""

    def __init__(self, depth: int, num_classes: int = 10) -> None:
        super().__init__()
        if (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {depth}")
        blocks = (depth - 2) // 6
        self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, blocks, stride=1)
        self.layer2 = self._stage(16, 32, blocks, stride=2)
        self.layer3 = self._stage(32, 64, blocks, stride=2)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.layer3(self.layer2(self.layer1(out)))
        features = out.mean(dim=(2, 3))
        return features, self.linear(features)


def _factory(depth: int):
    def build(checkpoint: Path | None) -> CifarResNet:
        model = CifarResNet(depth)
        if checkpoint is not None:
            load_state_dict_strict(model, read_torch_state_dict(checkpoint), checkpoint)
        return model

    build.__name__ = f"cifar10_resnet{depth}"
    return build


for _depth, _checkpoint in CHECKPOINTS.items():
    register_zoo_model(
        f"cifar10_resnet{_depth}", checkpoint=_checkpoint, input_size=(32, 32), in_chans=3,
        mean=IMAGENET_MEAN, std=IMAGENET_STD, feature_dim=64, num_classes=10, source="cifar10",
        class_names=CIFAR10_CLASSES, family="cifar_resnet",
    )(_factory(_depth))
