"""The model zoo. Importing this package registers every family (one module each).

Names: scheme prefix + family + depth (``lm_resnet56``, ``rk2_resnet20``), ResNeXt as ``resnext29_8x64d``; the
data set is ``num_classes``, never part of the name. ``resnet*`` are the post-activation CIFAR ResNets of He et al.
(2015); ``preact_resnet*`` / ``lm_resnet*`` and the other scheme prefixes share the pre-activation backbone of the
LM-ResNet paper (see :mod:`odearch.models.preact_resnet` for the legend).
"""

from . import cifar_resnet, imagenet_resnet, preact_resnet, resnext, shake_resnet  # noqa: F401  (registers the families)
from ._pretrained import list_pretrained
from ._registry import create_model, is_model, list_models, model_entrypoint, register_model
from .cifar_resnet import cifar_resnet as build_cifar_resnet
from .preact_resnet import preact_resnet as build_preact_resnet
from .resnext import cifar_resnext as build_cifar_resnext
from .shake_resnet import shake_resnet as build_shake_resnet

__all__ = [
    "build_cifar_resnet",
    "build_cifar_resnext",
    "build_preact_resnet",
    "build_shake_resnet",
    "create_model",
    "is_model",
    "list_models",
    "list_pretrained",
    "model_entrypoint",
    "register_model",
]
