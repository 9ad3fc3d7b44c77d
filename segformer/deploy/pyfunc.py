"""An exported SegFormer as an MLflow model (pyfunc flavour): RGB images in, class-id masks out.

:func:`save_model` writes an MLflow model folder around an ONNX export: ``MLmodel`` (flavour
``python_function``), this package's code (``code/segformer``, so loading needs no install of
segformer-automl), the environment (``requirements.txt``, ``python_env.yaml``, ``conda.yaml``)
and the artifacts, side by side in ``artifacts/``:

==================  ===============================================================================
artifact            file
==================  ===============================================================================
``onnx``            the fp32 ONNX model (``segformer.onnx``): what :class:`SegformerMasks` runs
``spec``            the resolved experiment spec (``experiment.yaml``): input size, mean/std, ...
``quantized_onnx``  the int8 ONNX model of the quantize step, when there is one
``deepstream``      ``config_infer_primary_segformer.txt`` for DeepStream's Gst-nvinfer
``labels``          ``labels.txt`` (one class name a line; the DeepStream config points at it)
``checkpoint``      the weights (``model.pth``) the ONNX model was exported from, without optimizer
                    state (``best/model.pth`` keeps it, to resume training)
==================  ===============================================================================

The DeepStream config names its ONNX and labels files relative to itself, so ``artifacts/`` is a
ready DeepStream model folder.

Input (Python and REST alike): one uint8 RGB image batch, shape (N, H, W, 3), any H and W (one
size per call; call once per size for images of different sizes). Output: class ids, uint8,
shape (N, H, W), at the input's size. The signature says so with tensor specs
((-1, -1, -1, 3) uint8 in, (-1, -1, -1) uint8 out); over REST the batch is
``{"inputs": [[[[r, g, b], ...], ...]]}`` (nested lists, pixel values 0..255) and the answer is
``{"predictions": [[[id, ...], ...]]}``.

Every image goes through :func:`segformer.engine.predictor.segment_images`, the code path of
``segformer inference``: resize to the spec's ``dataset.segment.img_size`` with the spec's
``augmentation`` mean/std normalisation (:func:`segformer.data.preprocess_image`), ONNX Runtime,
logits resized back to the image's size (``model.decode_head.align_corners``), argmax; with
``inference.sliding_window`` large images are covered by windows as there. The ids are the ones
``segformer inference`` writes to ``vis_tao``.

``model_config`` (given at load time: ``mlflow.pyfunc.load_model(uri, model_config={...})``):
``precision``: ``"fp32"`` (default, the exported model) or ``"int8"`` (the quantized ONNX model);
``on_cpu``: true to keep ONNX Runtime off a GPU.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Any, Mapping

import mlflow.pyfunc
import numpy as np

__all__ = ["SegformerMasks", "save_model", "pip_requirements", "signature", "input_example", "ARTIFACTS"]

ONNX, SPEC, QUANTIZED_ONNX, DEEPSTREAM, LABELS, CHECKPOINT = (
    "onnx", "spec", "quantized_onnx", "deepstream", "labels", "checkpoint")
ARTIFACTS = (ONNX, SPEC, QUANTIZED_ONNX, DEEPSTREAM, LABELS, CHECKPOINT)
PRECISIONS = {"fp32": ONNX, "int8": QUANTIZED_ONNX}
DEFAULT_CONFIG = {"precision": "fp32", "on_cpu": False}  # the model_config a load may override

# What loading and predicting imports (besides mlflow, which MLflow adds itself): the module, and
# the distribution to pin when the module's own lookup finds none.
_REQUIREMENTS = {
    "numpy": "numpy",
    "PIL": "pillow",  # image decoding / conversion (segformer.data.files)
    "yaml": "pyyaml",  # the spec (segformer.config)
    "omegaconf": "omegaconf",  # the spec's interpolations (segformer.config)
    "jsonschema": "jsonschema",  # the spec's validation (segformer.config)
    "onnx": "onnx",  # the model's input/output names and shapes (segformer.deploy.onnx_signature)
    "onnxruntime": "onnxruntime",  # runs the model
    "torch": "torch",  # preprocessing and logit resizing, shared with segformer inference
    "torchvision": "torchvision",  # imported by the shared transforms (segformer.data.transforms)
}


class SegformerMasks(mlflow.pyfunc.PythonModel):
    """RGB uint8 images (N, H, W, 3) -> class ids uint8 (N, H, W), with ONNX Runtime."""

    def load_context(self, context: Any) -> None:
        from segformer.config import load_config
        from segformer.deploy.runtime import OnnxPredictor, default_ort_providers

        options = {**DEFAULT_CONFIG, **(context.model_config or {})}
        precision = str(options.get("precision", "fp32"))
        if precision not in PRECISIONS:
            raise ValueError(f"model_config precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
        artifact = PRECISIONS[precision]
        if artifact not in context.artifacts:
            raise ValueError(f"this model carries no {precision} ONNX model (the quantize step did not produce one)")
        cfg = load_config(context.artifacts[SPEC], fetch=False)  # settings only: never the dataset it names
        segment = cfg.dataset.segment
        self.predictor = OnnxPredictor(context.artifacts[artifact],
                                       providers=default_ort_providers(on_cpu=bool(options.get("on_cpu", False))))
        self.settings = {
            "img_size": int(segment.img_size),
            "mean": tuple(float(v) for v in segment.augmentation.mean),
            "std": tuple(float(v) for v in segment.augmentation.std),
            "align_corners": bool(cfg.model.decode_head.align_corners),
            "sliding_window": bool(cfg.inference.sliding_window),
            "window_overlap": float(cfg.inference.window_overlap),
            "batch_size": max(1, int(cfg.inference.batch_size)),
        }

    def predict(self, context: Any, model_input: np.ndarray, params: dict[str, Any] | None = None) -> np.ndarray:
        """Class ids (N, H, W) uint8 of an RGB uint8 image batch (N, H, W, 3)."""
        from segformer.engine.predictor import segment_images

        images = _image_batch(model_input)
        if len(images) == 0:
            return np.zeros((0, *images.shape[1:3]), dtype=np.uint8)
        return np.stack(segment_images(self.predictor, list(images), **self.settings))


def _image_batch(model_input: Any) -> Any:
    """The input as a uint8 (N, H, W, 3) array; values outside 0..255 or another shape are refused."""
    if isinstance(model_input, Mapping):  # a named-tensor input: {"<name>": batch}
        if len(model_input) != 1:
            raise ValueError(f"expected one image batch, got inputs {sorted(model_input)}")
        model_input = next(iter(model_input.values()))
    if hasattr(model_input, "to_numpy"):  # a pandas DataFrame of one image batch column is not supported
        raise ValueError("expected a numpy array of shape (N, H, W, 3) (uint8 RGB), not a DataFrame")
    images = np.asarray(model_input)
    if images.ndim != 4 or images.shape[-1] != 3:
        raise ValueError(f"expected an RGB image batch of shape (N, H, W, 3), got shape {images.shape}")
    if images.dtype != np.uint8:
        if not (np.issubdtype(images.dtype, np.integer) or np.issubdtype(images.dtype, np.floating)):
            raise ValueError(f"expected uint8 pixel values, got dtype {images.dtype}")
        if images.size and (images.min() < 0 or images.max() > 255):
            raise ValueError("pixel values must be in 0..255 (uint8 RGB)")
        images = np.rint(images).astype(np.uint8)
    return images


def signature() -> Any:
    """Tensor signature: uint8 (-1, -1, -1, 3) images in, uint8 (-1, -1, -1) class ids out."""
    from mlflow.models.signature import ModelSignature
    from mlflow.types.schema import Schema, TensorSpec

    return ModelSignature(inputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))]),
                          outputs=Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1))]))


def input_example() -> np.ndarray:
    """A format example stored with the model (``serving_input_example.json`` shows the REST body):
    one 4x4 mid-grey RGB image."""
    return np.full((1, 4, 4, 3), 128, dtype=np.uint8)


def pip_requirements() -> list[str]:
    """The packages loading and predicting imports, pinned to the versions installed here (a local
    version label such as ``+cu130`` dropped: the public release of that version). onnxruntime is
    whichever distribution provides it here (``onnxruntime`` or ``onnxruntime-gpu``)."""
    provided = importlib.metadata.packages_distributions()
    requirements = []
    for module, fallback in _REQUIREMENTS.items():
        names = provided.get(module) or [fallback]
        name = fallback if fallback in names else sorted(names)[0]
        try:
            version = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            requirements.append(fallback)
            continue
        requirements.append(f"{name}=={version.split('+', 1)[0]}")
    return requirements


def save_model(path: str | Path, artifacts: Mapping[str, str | Path], *, metadata: Mapping[str, Any] | None = None,
               input_example: Any = None, precision: str = "fp32") -> Path:
    """Write the MLflow model folder `path` (which must not exist or be empty).

    `artifacts`: name -> file, with at least ``onnx`` and ``spec`` (see the module docstring);
    missing optional files are left out. `precision`: the model a load serves unless its
    model_config says otherwise (int8: the quantized ONNX model, which must be among the artifacts).
    """
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {sorted(PRECISIONS)}, got {precision!r}")
    if not artifacts.get(PRECISIONS[precision]):
        raise ValueError(f"precision {precision} needs the {PRECISIONS[precision]} artifact")
    import segformer

    missing = [name for name in (ONNX, SPEC) if not artifacts.get(name) or not Path(artifacts[name]).is_file()]
    if missing:
        raise FileNotFoundError(f"an MLflow model of a SegFormer needs the {' and '.join(missing)} file(s)")
    unknown = sorted(set(artifacts) - set(ARTIFACTS))
    if unknown:
        raise ValueError(f"unknown artifact name(s) {unknown}; known: {list(ARTIFACTS)}")
    files = {name: str(Path(file).resolve()) for name, file in artifacts.items() if file and Path(file).is_file()}
    names = [Path(file).name for file in files.values()]
    if len(set(names)) != len(names):  # they share artifacts/: one would replace another
        raise ValueError(f"artifact file names must differ, got {names}")
    # MLflow says "Validating input example against model signature" at INFO (a failed check still raises).
    logging.getLogger("mlflow.pyfunc").setLevel(logging.WARNING)
    mlflow.pyfunc.save_model(
        str(path),
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),  # models from code: nothing pickled
        artifacts=files,
        code_paths=[str(Path(segformer.__file__).resolve().parent)],
        pip_requirements=pip_requirements(),
        signature=signature(),
        input_example=input_example,
        metadata=dict(metadata or {}),
        model_config={**DEFAULT_CONFIG, "precision": precision},  # declared: load_model(..., model_config=...) overrides it
    )
    return Path(path)
