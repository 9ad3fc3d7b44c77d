"""PyTorch post-training quantization: backends ``torchao`` and ``modelopt.pytorch``.

- torchao (``weight_only_ptq``): int8 weight-only quantization of ``nn.Linear`` layers (torchao's
  Int8WeightOnlyConfig covers Linear only; convolutions stay float). Activation settings are
  ignored, as TAO documents. Measured here: it shrinks the Linear weights 4x but gives no eager
  CPU speed-up.
- modelopt.pytorch (``static_ptq``): NVIDIA ModelOpt fake-quant int8 (per-channel weights,
  per-tensor activations) on Linear and Conv2d, calibrated with ``minmax``/``max`` (running max)
  or ``entropy`` (histogram + KL). Runs on CPU; the quantized model exports to Q/DQ ONNX that
  TensorRT builds as an INT8 engine.

Both apply ``quantize.layers`` / ``skip_names`` to the candidate modules through
:func:`select_names`, and both record which modules they quantized so the artifact can be
rebuilt exactly by :mod:`segformer.deploy.quantize.artifacts`.
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
from torch import nn

from segformer.errors import SpecError

from .._deps import QUANT_HINT, require
from .patterns import LayerRule, nothing_to_quantize, select_names

__all__ = [
    "torchao_candidates",
    "quantize_torchao",
    "apply_torchao",
    "modelopt_candidates",
    "quantize_modelopt",
    "MODELOPT_ALGORITHMS",
]

MODELOPT_ALGORITHMS = ("minmax", "max", "entropy")
log = logging.getLogger(__name__)


def _candidates(model: nn.Module, types: tuple[type, ...]) -> list[tuple[str, str]]:
    return [(name, type(m).__name__) for name, m in model.named_modules() if isinstance(m, types) and name]


# ---------------------------------------------------------------------------------------------
# torchao


def torchao_candidates(model: nn.Module) -> list[tuple[str, str]]:
    return _candidates(model, (nn.Linear,))


def apply_torchao(model: nn.Module, module_names: Sequence[str]) -> nn.Module:
    """Int8 weight-only quantize exactly ``module_names`` in place (also used when reloading)."""
    require("torchao", purpose="quantize backend 'torchao'", hint=QUANT_HINT)
    from torchao.quantization import Int8WeightOnlyConfig, quantize_

    wanted = set(module_names)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # torchao announces config deprecations on every call
        quantize_(model, Int8WeightOnlyConfig(), filter_fn=lambda module, fqn: fqn in wanted)
    return model


def quantize_torchao(
    model: nn.Module, *, rules: Sequence[LayerRule] = (), skip_names: Sequence[str] = ()
) -> tuple[nn.Module, list[str]]:
    """Return (quantized model, quantized module names); ``model`` is modified in place."""
    for rule in rules:
        if rule.activations_dtype not in (None, "native", "int8"):
            log.warning("torchao is weight-only: activations dtype of %r is ignored", rule.module_name)
    chosen = select_names(torchao_candidates(model), rules, skip_names)
    if not chosen:
        raise SpecError(
            "torchao found no nn.Linear module to quantize after quantize.layers/skip_names "
            "(torchao weight-only int8 covers nn.Linear only)"
        )
    return apply_torchao(model.eval(), chosen), chosen


# ---------------------------------------------------------------------------------------------
# ModelOpt (PyTorch)


def modelopt_candidates(model: nn.Module) -> list[tuple[str, str]]:
    return _candidates(model, (nn.Linear, nn.Conv2d))


def _modelopt_config(algorithm: str) -> tuple[dict[str, Any], Any]:
    mtq = require("modelopt.torch.quantization", purpose="quantize backend 'modelopt.pytorch'", hint=QUANT_HINT)
    weight: dict[str, Any] = {"num_bits": 8, "axis": 0}
    activation: dict[str, Any] = {"num_bits": 8, "axis": None}
    if algorithm == "entropy":  # histograms for activations; per-channel weights keep max
        activation["calibrator"] = "histogram"
    return {
        "quant_cfg": [
            {"quantizer_name": "*", "enable": False},
            {"quantizer_name": "*weight_quantizer", "cfg": weight},
            {"quantizer_name": "*input_quantizer", "cfg": activation},
        ],
        # Calibration is run below, after layers/skip_names have disabled their quantizers.
        "algorithm": None,
    }, mtq


def quantize_modelopt(
    model: nn.Module,
    forward_loop: Callable[[nn.Module], None],
    *,
    algorithm: str = "minmax",
    rules: Sequence[LayerRule] = (),
    skip_names: Sequence[str] = (),
) -> tuple[nn.Module, list[str]]:
    """Insert int8 fake-quantizers, calibrate with ``forward_loop(model)``, return (model, names)."""
    if algorithm not in MODELOPT_ALGORITHMS:
        raise SpecError(
            f"quantize.algorithm {algorithm!r} is not supported for int8 static PTQ with "
            f"modelopt.pytorch here; use one of {MODELOPT_ALGORITHMS}"
        )
    config, mtq = _modelopt_config(algorithm)
    chosen = select_names(modelopt_candidates(model), rules, skip_names)
    if not chosen:
        raise nothing_to_quantize(rules, skip_names, "Linear/Conv2d module")
    model = mtq.quantize(model.eval(), config, forward_loop=None)
    disable_unselected_quantizers(model, chosen)
    with torch.no_grad():
        if algorithm == "entropy":
            from modelopt.torch.quantization import model_calib

            from modelopt.torch.quantization.nn import TensorQuantizer

            model_calib.enable_stats_collection(model)
            forward_loop(model)
            for name, module in list(model.named_modules()):
                if isinstance(module, TensorQuantizer):
                    method = None if name.endswith("weight_quantizer") else "entropy"
                    model_calib.finish_stats_collection(module, method=method)
        else:  # "minmax" (TAO's name) and "max" are the same running-absmax calibration
            mtq.calibrate(model, algorithm="max", forward_loop=forward_loop)
    return model, chosen


def disable_unselected_quantizers(model: nn.Module, chosen: Iterable[str]) -> None:
    keep = set(chosen)
    for name, module in model.named_modules():
        if name in keep:
            continue
        for attr in ("weight_quantizer", "input_quantizer", "output_quantizer"):
            quantizer = getattr(module, attr, None)
            if quantizer is not None and hasattr(quantizer, "disable"):
                quantizer.disable()
