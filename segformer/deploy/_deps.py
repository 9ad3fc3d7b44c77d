"""Optional dependencies of the deploy package, imported only where they are needed.

Every missing optional package raises :class:`MissingDependencyError`, whose message is one line
that names what to install, so the CLI can print it as is (no traceback).
"""

from __future__ import annotations

import importlib
from types import ModuleType

__all__ = ["MissingDependencyError", "require", "tensorrt_unavailable", "TENSORRT_HINT", "QUANT_HINT"]

TENSORRT_HINT = (
    "pip install 'segformer-automl[tensorrt]' (the tensorrt wheels download their libraries from "
    "NVIDIA's index, https://pypi.nvidia.com; a CUDA GPU and driver are required)"
)
QUANT_HINT = "pip install 'segformer-automl[quant]'"


from segformer.errors import MissingDependencyError  # noqa: E402  (a SegformerError: no traceback)


def require(module: str, *, purpose: str, hint: str) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` saying why it is needed.

    Example: ``trt = require("tensorrt", purpose="gen_trt_engine", hint=TENSORRT_HINT)``.
    """
    try:
        return importlib.import_module(module)
    except ImportError as err:  # also catches broken installs (missing shared libraries)
        raise MissingDependencyError(
            f"{purpose} needs the Python package '{module}', which is not importable ({err}); "
            f"install it with: {hint}"
        ) from err


def tensorrt_unavailable() -> str | None:
    """Why TensorRT cannot run here (its package, or a CUDA GPU, is missing), or None when it can."""
    try:
        importlib.import_module("tensorrt")
    except ImportError:  # also a broken install (missing shared libraries)
        return "TensorRT is not installed (pip install 'segformer-automl[tensorrt]' on a machine with an NVIDIA GPU)"
    try:
        import torch
    except ImportError:
        return None
    return None if torch.cuda.is_available() else "TensorRT needs a CUDA GPU and none is visible"
