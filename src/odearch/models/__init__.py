"""The model zoo. Importing this package registers every family (one module each).

Names: scheme prefix + family + depth (``lm_resnet56``, ``rk2_resnet20``), ResNeXt as ``resnext29_8x64d``; the
data set is ``num_classes``, never part of the name. ``resnet*`` are the post-activation CIFAR ResNets of He et al.
(2015); ``preact_resnet*`` / ``lm_resnet*`` and the other scheme prefixes share the pre-activation backbone of the
LM-ResNet paper (see :mod:`odearch.models.preact_resnet` for the legend).

Each family file holds its constructor and a literal table of its registered names (``_ROWS``: name ->
(constructor arguments, docstring)); ``make_stages`` assembles the stages of every family; every model takes one
:class:`StochasticDepth` value (or its fields ``p_last=``, ``drop_mode=``, ``noise_sigma=`` as keywords), and
:func:`model_options` says which keywords a model takes.
"""

from ..nn.stochastic import StochasticDepth
from . import cifar_resnet, imagenet_resnet, preact_resnet, resnext, shake_resnet  # noqa: F401  (registers the families)
from ._builders import StageSpec, make_stages
from ._pretrained import FORMAT as WEIGHTS_FORMAT
from ._pretrained import (
    REGISTRY_FILE,
    PretrainedError,
    file_sha256,
    list_pretrained,
    read_registry,
    read_shipped_record,
    registry_file,
    registry_problems,
    shipped_record_registry,
    shipped_run_weights,
    shipped_weights_named,
)
from ._registry import (
    check_model_options,
    create_model,
    is_model,
    list_models,
    model_entrypoint,
    model_options,
    models_taking,
    register_model,
    register_table,
)
from .cifar_resnet import cifar_resnet as build_cifar_resnet
from .preact_resnet import preact_resnet as build_preact_resnet
from .resnext import cifar_resnext as build_cifar_resnext
from .shake_resnet import shake_resnet as build_shake_resnet
from .table import MODEL_OPTIONS, model_table, models_markdown, option_help

__all__ = [
    "MODEL_OPTIONS",
    "REGISTRY_FILE",
    "WEIGHTS_FORMAT",
    "PretrainedError",
    "StageSpec",
    "StochasticDepth",
    "build_cifar_resnet",
    "build_cifar_resnext",
    "build_preact_resnet",
    "build_shake_resnet",
    "check_model_options",
    "create_model",
    "file_sha256",
    "is_model",
    "list_models",
    "list_pretrained",
    "make_stages",
    "model_entrypoint",
    "model_options",
    "model_table",
    "models_markdown",
    "models_taking",
    "option_help",
    "read_registry",
    "read_shipped_record",
    "register_model",
    "register_table",
    "registry_file",
    "registry_problems",
    "shipped_record_registry",
    "shipped_run_weights",
    "shipped_weights_named",
]
