"""The Keras models of the MANIFEST's second batch, ported by :mod:`spider.zoo.keras_port`.

Every input convention is expressed by the registry's ``mean``/``std`` on ``[0, 1]`` pixels,
which :func:`spider.pipeline.extract.preprocess` applies for extraction and fine-tuning alike:

* ``x / 255`` -> mean 0, std 1; ``x / 127.5 - 1`` -> mean 0.5, std 0.5;
* raw 0-255 pixels (the GTSRB CNN, MLPerf's ResNet-8) -> mean 0, std 1/255;
* a global z-score ``(x - 121.9) / 68.4`` on 0-255 pixels (the CIFAR-100 CNN) ->
  mean 121.9/255, std 68.4/255.

The one convention mean/std cannot say is the EMNIST CNN's transposed images (EMNIST stores
characters transposed): :class:`TransposedInput` transposes inside the model, so every caller
feeds upright images and no pipeline stage can forget it.

MobileNet v1 0.25 (ImageNet, ``include_top=False``) is a weights-only file: its architecture,
``keras.applications.MobileNet(alpha=0.25, include_top=False, pooling="avg")``, is written out
in :func:`mobilenet_v1_config` (layer names match the file's weight groups).
"""

from __future__ import annotations

from pathlib import Path

import torch

from spider.zoo.cifar_resnet import CIFAR10_CLASSES
from spider.zoo.datasets import DIGITS
from spider.zoo.keras_port import KerasNet, keras_factory
from spider.zoo.model_registry import ZooNet, register_zoo_model

LETTERS = tuple(chr(c) for c in range(ord("A"), ord("Z") + 1))
EMNIST_BYCLASS = DIGITS + LETTERS + tuple(c.lower() for c in LETTERS)
SIGN_MNIST_LETTERS = tuple(c for c in LETTERS if c not in "JZ")  # J and Z need motion
VWW_CLASSES = ("no_person", "person")
GTSRB_CLASSES = (
    "Speed limit (20km/h)", "Speed limit (30km/h)", "Speed limit (50km/h)", "Speed limit (60km/h)",
    "Speed limit (70km/h)", "Speed limit (80km/h)", "End of speed limit (80km/h)",
    "Speed limit (100km/h)", "Speed limit (120km/h)", "No passing",
    "No passing for vehicles over 3.5 metric tons", "Right-of-way at the next intersection",
    "Priority road", "Yield", "Stop", "No vehicles", "Vehicles over 3.5 metric tons prohibited",
    "No entry", "General caution", "Dangerous curve to the left", "Dangerous curve to the right",
    "Double curve", "Bumpy road", "Slippery road", "Road narrows on the right", "Road work",
    "Traffic signals", "Pedestrians", "Children crossing", "Bicycles crossing",
    "Beware of ice/snow", "Wild animals crossing", "End of all speed and passing limits",
    "Turn right ahead", "Turn left ahead", "Ahead only", "Go straight or right",
    "Go straight or left", "Keep right", "Keep left", "Roundabout mandatory", "End of no passing",
    "End of no passing by vehicles over 3.5 metric tons",
)
CIFAR100_CLASSES = (
    "apple", "aquarium_fish", "baby", "bear", "beaver", "bed", "bee", "beetle", "bicycle", "bottle",
    "bowl", "boy", "bridge", "bus", "butterfly", "camel", "can", "castle", "caterpillar", "cattle",
    "chair", "chimpanzee", "clock", "cloud", "cockroach", "couch", "crab", "crocodile", "cup",
    "dinosaur", "dolphin", "elephant", "flatfish", "forest", "fox", "girl", "hamster", "house",
    "kangaroo", "keyboard", "lamp", "lawn_mower", "leopard", "lion", "lizard", "lobster", "man",
    "maple_tree", "motorcycle", "mountain", "mouse", "mushroom", "oak_tree", "orange", "orchid",
    "otter", "palm_tree", "pear", "pickup_truck", "pine_tree", "plain", "plate", "poppy",
    "porcupine", "possum", "rabbit", "raccoon", "ray", "road", "rocket", "rose", "sea", "seal",
    "shark", "shrew", "skunk", "skyscraper", "snail", "snake", "spider", "squirrel", "streetcar",
    "sunflower", "sweet_pepper", "table", "tank", "telephone", "television", "tiger", "tractor",
    "train", "trout", "tulip", "turtle", "wardrobe", "whale", "willow_tree", "wolf", "woman", "worm",
)

# (pointwise filters at alpha 1, depthwise stride) of the 13 blocks of MobileNet v1.
_MOBILENET_BLOCKS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1),
                     (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))


def mobilenet_v1_config(alpha: float = 0.25) -> dict:
    """Keras ``model_config`` of ``MobileNet(alpha, include_top=False, pooling="avg")``.

    As in ``keras.applications``: the stem is a "same" stride-2 conv; a stride-2 depthwise conv
    is a bottom/right ZeroPadding2D then a "valid" conv; every conv is bias-free, followed by
    BatchNormalization (epsilon 1e-3) and ReLU6. The input size is left open (fully convolutional).
    """
    layers: list[dict] = []

    def add(kind: str, name: str, parent: str | None, **cfg) -> str:
        layers.append({"class_name": kind, "name": name, "config": {"name": name, **cfg},
                       "inbound_nodes": [[[parent, 0, 0, {}]]] if parent else []})
        return name

    def bn_relu6(x: str, prefix: str) -> str:
        x = add("BatchNormalization", f"{prefix}_bn", x, axis=-1, epsilon=1e-3)
        return add("ReLU", f"{prefix}_relu", x, max_value=6.0)

    x = add("InputLayer", "input_1", None, batch_input_shape=[None, None, None, 3])
    x = add("Conv2D", "conv1", x, filters=int(32 * alpha), kernel_size=[3, 3], strides=[2, 2],
            padding="same", use_bias=False)
    x = bn_relu6(x, "conv1")
    for block, (filters, stride) in enumerate(_MOBILENET_BLOCKS, start=1):
        if stride == 2:
            x = add("ZeroPadding2D", f"conv_pad_{block}", x, padding=[[0, 1], [0, 1]])
        x = add("DepthwiseConv2D", f"conv_dw_{block}", x, kernel_size=[3, 3],
                strides=[stride, stride], padding="same" if stride == 1 else "valid", use_bias=False)
        x = bn_relu6(x, f"conv_dw_{block}")
        x = add("Conv2D", f"conv_pw_{block}", x, filters=int(filters * alpha), kernel_size=[1, 1],
                strides=[1, 1], padding="same", use_bias=False)
        x = bn_relu6(x, f"conv_pw_{block}")
    x = add("GlobalAveragePooling2D", "global_average_pooling2d_1", x)
    return {"class_name": "Model",
            "config": {"name": f"mobilenet_{alpha:g}", "layers": layers,
                       "input_layers": [["input_1", 0, 0]], "output_layers": [[x, 0, 0]]}}


class TransposedInput(ZooNet):
    """Feeds ``net`` the transpose (height <-> width) of upright images: EMNIST's orientation."""

    def __init__(self, net: KerasNet) -> None:
        super().__init__()
        self.net = net

    def features_and_logits(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        return self.net.features_and_logits(x.transpose(2, 3))


def _transposed(factory):
    def build(checkpoint: Path | None) -> TransposedInput:
        return TransposedInput(factory(checkpoint))

    return build


_RAW = 1.0 / 255.0  # std turning [0, 1] pixels back into raw 0-255 values

register_zoo_model(
    "keras_mobilenet_v1_025_imagenet",
    checkpoint="weights/keras_mobilenet_v1_0.25_imagenet/mobilenet_2_5_224_tf_no_top.h5",
    input_size=(224, 224), in_chans=3, mean=(0.5,) * 3, std=(0.5,) * 3,  # x / 127.5 - 1
    feature_dim=256, num_classes=0, source="imagenet", family="keras_mobilenet_v1",
)(keras_factory("weights/keras_mobilenet_v1_0.25_imagenet/mobilenet_2_5_224_tf_no_top.h5",
                architecture=mobilenet_v1_config, headless=True, input_hw=(224, 224)))

register_zoo_model(
    "vww_mobilenet_v1_025", checkpoint="weights/mlperf_tiny_vww_mobilenetv1_0.25/vww_96.h5",
    input_size=(96, 96), in_chans=3, mean=(0.0,) * 3, std=(1.0,) * 3,  # x / 255
    feature_dim=256, num_classes=2, source="visual_wake_words", class_names=VWW_CLASSES,
    family="keras_mobilenet_v1",
)(keras_factory("weights/mlperf_tiny_vww_mobilenetv1_0.25/vww_96.h5"))

register_zoo_model(
    "mlperf_resnet8_cifar10", checkpoint="weights/mlperf_tiny_resnet8_cifar10/pretrainedResnet.h5",
    # raw 0-255: MLPerf's train.py feeds the uint8 CIFAR-10 arrays unscaled
    input_size=(32, 32), in_chans=3, mean=(0.0,) * 3, std=(_RAW,) * 3,
    feature_dim=64, num_classes=10, source="cifar10", class_names=CIFAR10_CLASSES,
    family="keras_resnet8",
)(keras_factory("weights/mlperf_tiny_resnet8_cifar10/pretrainedResnet.h5"))

register_zoo_model(
    "gtsrb_cnn", checkpoint="weights/gtsrb_cnn_dataflair/traffic_classifier.h5",
    input_size=(30, 30), in_chans=3, mean=(0.0,) * 3, std=(_RAW,) * 3,  # raw 0-255 pixels
    feature_dim=256, num_classes=43, source="gtsrb", class_names=GTSRB_CLASSES,
    family="keras_cnn",
)(keras_factory("weights/gtsrb_cnn_dataflair/traffic_classifier.h5"))

register_zoo_model(
    "emnist62_cnn", checkpoint="weights/emnist_byclass62_cnn/emnist_model.h5",
    input_size=(28, 28), in_chans=1, mean=(0.0,), std=(1.0,),  # x / 255, transposed in the model
    feature_dim=128, num_classes=62, source="emnist_byclass", class_names=EMNIST_BYCLASS,
    family="keras_cnn",
)(_transposed(keras_factory("weights/emnist_byclass62_cnn/emnist_model.h5")))

register_zoo_model(
    "doodlenet_quickdraw345", checkpoint="weights/doodlenet_quickdraw345/doodleNet-model.h5",
    input_size=(28, 28), in_chans=1, mean=(0.0,), std=(1.0,),  # x / 255, white strokes on black
    # the 345 class names live in the data folder's class_names.txt, not in the registry
    feature_dim=512, num_classes=345, source="quickdraw", family="keras_cnn",
)(keras_factory("weights/doodlenet_quickdraw345/doodleNet-model.h5"))

register_zoo_model(
    "sign_mnist_cnn", checkpoint="weights/sign_mnist_cnn/sign_mnist_model.h5",
    input_size=(28, 28), in_chans=1, mean=(0.0,), std=(1.0,),  # x / 255
    feature_dim=512, num_classes=24, source="sign_mnist", class_names=SIGN_MNIST_LETTERS,
    family="keras_cnn",
)(keras_factory("weights/sign_mnist_cnn/sign_mnist_model.h5"))

register_zoo_model(
    "cifar100_cnn", checkpoint="weights/cifar100_cnn_rajuranpe/cifar100_model.h5",
    input_size=(32, 32), in_chans=3, mean=(121.9 / 255,) * 3, std=(68.4 / 255,) * 3,
    feature_dim=32, num_classes=100, source="cifar100", class_names=CIFAR100_CLASSES,
    family="keras_cnn",
)(keras_factory("weights/cifar100_cnn_rajuranpe/cifar100_model.h5",
                architecture="weights/cifar100_cnn_rajuranpe/cifar100_model.json"))
