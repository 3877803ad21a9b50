"""The five Keras XCEPTION face models (``weights/faces/*.hdf5``), ported by :mod:`spider.zoo.keras_port`.

Input ``[N, 1, 64, 64]`` holding ``x / 255 * 2 - 1``. Features are the global average of the input
of the last convolution (the classifier); logits are the input of the final softmax.
"""

from __future__ import annotations

from spider.zoo.keras_port import KerasPortError, keras_factory, load_keras_model, same_padding
from spider.zoo.model_registry import register_zoo_model

__all__ = ["FER_EMOTIONS", "GENDERS", "KerasPortError", "load_keras_model", "same_padding"]

FER_EMOTIONS = ("angry", "disgust", "fear", "happy", "sad", "surprise", "neutral")
GENDERS = ("woman", "man")


_FACE_MODELS = (
    # name, file, feature dim, classes, source
    ("fer2013_mini_xception", "fer2013_mini_XCEPTION.102-0.66.hdf5", 128, FER_EMOTIONS, "fer2013"),
    ("fer2013_big_xception", "fer2013_big_XCEPTION.54-0.66.hdf5", 256, FER_EMOTIONS, "fer2013"),
    ("gender_mini_xception", "gender_mini_XCEPTION.21-0.95.hdf5", 128, GENDERS, "imdb_gender"),
    ("kdef_mini_xception", "mini_XCEPTION_KDEF.hdf5", 128, FER_EMOTIONS, "kdef"),
    ("kdef_tiny_xception", "tiny_XCEPTION_KDEF.hdf5", 64, FER_EMOTIONS, "kdef"),
)

for _name, _file, _dim, _classes, _source in _FACE_MODELS:
    register_zoo_model(
        _name, checkpoint=f"weights/faces/{_file}", input_size=(64, 64), in_chans=1,
        mean=(0.5,), std=(0.5,),  # x / 255 * 2 - 1
        feature_dim=_dim, num_classes=len(_classes), source=_source, class_names=_classes,
        family="keras_xception",
    )(keras_factory(f"weights/faces/{_file}"))
