"""One prediction path for every runtime (PyTorch, ONNX Runtime, TensorRT, quantized PyTorch).

A :class:`Predictor` maps normalized images to logits; evaluate and inference only ever talk to
this protocol, then upsample, argmax and score or save exactly the same way for every runtime.
Which runtime is used follows from the action's section of the spec (:func:`load_predictor`):

- ``trt_engine`` set, or a ``checkpoint`` ending in ``.engine``/``.plan``/``.trt``
                                    -> TensorRT (``segformer.deploy.runtime.TrtPredictor``)
- ``checkpoint`` ending in ``.onnx`` -> ONNX Runtime (``OnnxPredictor``)
- ``is_quantized: true``            -> quantized PyTorch artifact (``load_quantized_predictor``)
- otherwise                         -> PyTorch (:class:`TorchPredictor`) from our checkpoint format
                                       or a Lightning checkpoint.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from segformer.errors import CheckpointError, MissingDependencyError, SegformerError, SpecError

if TYPE_CHECKING:
    from segformer.config import ExperimentConfig, ModelConfig

log = logging.getLogger(__name__)

TRT_SUFFIXES = (".engine", ".plan", ".trt")  # TensorRT engine files, by the names TAO and trtexec use
SECTIONS = ("evaluate", "inference")


@runtime_checkable
class Predictor(Protocol):
    """``__call__``: normalized float32 images (N, 3, H, W) -> logits (N, K, h, w), any h, w."""

    num_classes: int
    input_size: tuple[int, int] | None  # fixed (H, W) of an exported model; None accepts any size

    def __call__(self, images: Tensor) -> Tensor: ...


class TorchPredictor:
    """A PyTorch SegFormer in eval mode on ``device``."""

    input_size: tuple[int, int] | None = None

    def __init__(self, model: nn.Module, device: torch.device | str = "cpu") -> None:
        self.device = torch.device(device)
        self.model = model.eval().to(self.device)
        num_classes = getattr(model, "num_classes", None)
        if num_classes is None:
            raise TypeError(f"{type(model).__name__} has no num_classes attribute")
        self.num_classes = int(num_classes)

    @torch.inference_mode()
    def __call__(self, images: Tensor) -> Tensor:
        return self.model(images.to(self.device, torch.float32)).float()


def select_device(num_gpus: int, gpu_ids: Sequence[int] | None) -> torch.device:
    """First requested GPU when CUDA is there and GPUs were asked for, else the CPU (with a note)."""
    if num_gpus > 0 and torch.cuda.is_available():
        index = int(gpu_ids[0]) if gpu_ids else 0
        return torch.device("cuda", index)
    if num_gpus > 0:
        _say_no_gpu()
    return torch.device("cpu")


@functools.cache
def _say_no_gpu() -> None:
    """Once per process: a promotion evaluates the model seven times."""
    log.warning("no CUDA GPU available: running on the CPU")


def load_predictor(cfg: ExperimentConfig, section: str) -> Predictor:
    """Pick the runtime from ``cfg.<section>`` (see the module docstring) and load the model."""
    if section not in SECTIONS:
        raise ValueError(f"section must be one of {SECTIONS}, got {section!r}")
    options = cfg.evaluate if section == "evaluate" else cfg.inference
    num_classes = int(cfg.dataset.segment.num_classes)
    device = select_device(int(options.num_gpus), options.gpu_ids)
    trt_engine, checkpoint = options.trt_engine, options.checkpoint
    if checkpoint and not trt_engine and Path(str(checkpoint)).suffix.lower() in TRT_SUFFIXES:
        trt_engine = checkpoint  # a TensorRT engine given as the checkpoint: TensorRT runs it (and says if it is missing)
    if trt_engine and str(trt_engine).lower().endswith(".onnx"):
        # An ONNX model given as the engine (a deploy template filled with export's output): TensorRT
        # would build an engine from it first; ONNX Runtime runs it as it is.
        log.warning("%s.trt_engine %s is an ONNX model, not a TensorRT engine: running it with ONNX Runtime "
                    "(gen_trt_engine builds an engine from it)", section, trt_engine)
        trt_engine, checkpoint = None, trt_engine
    if trt_engine:
        predictor: Predictor = _deploy_runtime(section).TrtPredictor(_existing(trt_engine, f"{section}.trt_engine"))
    elif checkpoint and str(checkpoint).lower().endswith(".onnx"):
        predictor = _deploy_runtime(section).OnnxPredictor(_existing(checkpoint, f"{section}.checkpoint"))
        if options.is_quantized and not _quantized_onnx(Path(str(checkpoint))):
            log.warning("%s.is_quantized is true but %s holds no quantized operator: it runs as the float model it is "
                        "(the quantized one is quantize/quantized_model_*.onnx)", section, checkpoint)
    elif options.is_quantized:
        if not checkpoint:
            raise SegformerError(f"{section}.is_quantized is true but {section}.checkpoint is not set; "
                                 "point it at the artifact written by the quantize action")
        predictor = _deploy_runtime(section).load_quantized_predictor(
            _existing(checkpoint, f"{section}.checkpoint"), cfg.model, num_classes, device)
    else:
        if not checkpoint:
            raise SegformerError(f"{section}.checkpoint is not set; give a checkpoint (for example "
                                 "results_dir/train/segformer_model_latest.pth) or a trt_engine")
        model, meta = load_torch_model_and_meta(cfg.model, num_classes, _existing(checkpoint, f"{section}.checkpoint"))
        predictor = TorchPredictor(model, device)
        _warn_other_size(checkpoint, meta.get("img_size"), cfg.dataset.segment.img_size, section)
    from segformer.data.transforms import size_pair

    size = cfg.dataset.segment.img_size
    if predictor.input_size is not None and tuple(predictor.input_size) != size_pair(size):
        # named: quantize evaluates two models of one size, and the two lines are about different files
        model = Path(str(getattr(predictor, "path", "") or options.trt_engine or checkpoint)).name
        log.warning("%s takes %dx%d inputs (fixed when it was exported): images are resized to that for it, not "
                    "to dataset.segment.img_size %s, and its predictions back", model, *predictor.input_size, size)
    if predictor.num_classes != num_classes:
        raise SegformerError(
            f"the model predicts {predictor.num_classes} classes but dataset.segment.num_classes is {num_classes}; "
            "evaluate with the dataset spec the model was trained with"
        )
    return predictor


def _warn_other_size(checkpoint: Any, trained: Any, size: Any, section: str) -> None:
    """A PyTorch model run at another input size than it was trained at (its meta's img_size): it runs
    (SegFormer takes any size), but scores differ from the model's own, in silence (0.92 at 256 px for
    a model that scores 0.84 at its 64)."""
    from segformer.data.transforms import size_pair

    if not trained or size_pair(trained) == size_pair(size):
        return
    h, w = size_pair(trained)
    log.warning("%s was trained at %dx%d but dataset.segment.img_size is %s: images are resized to that for it, so "
                "its %s are not those of the model at its own size; set dataset.segment.img_size=%s to run it as trained",
                Path(str(checkpoint)).name, h, w, size, "scores" if section == "evaluate" else "predictions",
                h if h == w else f"[{h},{w}]")


def load_torch_model(model_cfg: ModelConfig, num_classes: int, checkpoint: Path) -> nn.Module:
    """Build the spec's model and load a whole checkpoint into it (our format or Lightning's)."""
    return load_torch_model_and_meta(model_cfg, num_classes, checkpoint)[0]


def load_torch_model_and_meta(model_cfg: ModelConfig, num_classes: int, checkpoint: Path) -> tuple[nn.Module, dict]:
    """`load_torch_model`, and the checkpoint's description of how it was trained (backbone,
    img_size, mean/std, palette; empty for a checkpoint without one)."""
    from segformer.model import build_segformer, load_into, load_model_weights
    from segformer.model.checkpoints import check_checkpoint_fits

    try:
        state, meta = load_model_weights(checkpoint)
    except (OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint {checkpoint}: {exc}") from exc
    check_checkpoint_fits(checkpoint, meta, backbone=model_cfg.backbone.type,
                          embed_dim=int(model_cfg.decode_head.decoder_params.embed_dim), num_classes=num_classes)
    model = build_segformer(model_cfg, num_classes, load_pretrained=False)
    try:
        load_into(model, state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{checkpoint} does not fit the model of the spec: {exc}") from exc
    return model, meta


def _existing(path: Any, key: str) -> Path:
    path = Path(path)
    if not path.is_file():
        raise SegformerError(f"{key} points to {path}, which does not exist")
    return path


def _deploy_runtime(section: str) -> Any:
    try:
        from segformer.deploy import runtime
    except ImportError as exc:
        raise MissingDependencyError(
            f"{section} with an ONNX, TensorRT or quantized model needs segformer.deploy.runtime, which could "
            f"not be imported ({exc}); install the deploy extras or evaluate a PyTorch checkpoint"
        ) from exc
    return runtime


# --------------------------------------------------------------------------- shared decoding
def run_predictor(predictor: Predictor, images: Tensor) -> Tensor:
    """Raw float logits (N, K, h, w); input resized first for a model with a fixed input size."""
    if predictor.input_size is not None and tuple(images.shape[-2:]) != tuple(predictor.input_size):
        images = F.interpolate(images, size=predictor.input_size, mode="bilinear", align_corners=False)
    return predictor(images).float()


def resize_logits(logits: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Bilinear resize of (N, K, h, w) logits to ``size`` = (H, W) (no-op when equal)."""
    if tuple(logits.shape[-2:]) == tuple(size):
        return logits
    return F.interpolate(logits, size=tuple(size), mode="bilinear", align_corners=align_corners)


def predict_logits(predictor: Predictor, images: Tensor, size: Sequence[int], align_corners: bool = False) -> Tensor:
    """Logits (N, K, *size) of normalized images, for any runtime."""
    return resize_logits(run_predictor(predictor, images), size, align_corners)


def class_ids(
    predictor: Predictor,
    image: Any,
    logits: Tensor,
    *,
    img_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    align_corners: bool = False,
    sliding_window: bool = False,
    window_overlap: float = 1 / 3,
    batch_size: int = 4,
) -> Any:
    """Class ids (H, W) uint8 of one RGB image (H, W, 3) uint8 at its own size: what
    ``segformer inference`` writes to ``vis_tao``.

    ``logits`` (1, K, h, w) are the predictor's logits of the image preprocessed at ``img_size``
    (:func:`~segformer.data.preprocess_image`, then :func:`run_predictor`); they are resized back
    to (H, W) and argmaxed. With ``sliding_window`` an image with a side longer than the window
    (the model's fixed input size, else ``img_size``) is instead normalized at full resolution and
    covered by overlapping windows (:func:`sliding_window_logits`).
    """
    import numpy as np

    height, width = image.shape[:2]
    window = predictor.input_size or ((int(img_size),) * 2 if isinstance(img_size, int) else tuple(img_size))
    if sliding_window and (height > window[0] or width > window[1]):
        from PIL import Image

        from segformer.data import preprocess_image

        full = preprocess_image(Image.fromarray(image), (height, width), mean, std)
        image_logits = sliding_window_logits(predictor, full[None], window, float(window_overlap), align_corners,
                                             batch_size=int(batch_size))
    else:
        image_logits = resize_logits(logits, (height, width), align_corners)
    return image_logits[0].argmax(0).cpu().numpy().astype(np.uint8)


def segment_images(
    predictor: Predictor,
    images: Sequence[Any],
    *,
    img_size: int | Sequence[int],
    mean: Sequence[float],
    std: Sequence[float],
    align_corners: bool = False,
    sliding_window: bool = False,
    window_overlap: float = 1 / 3,
    batch_size: int = 4,
) -> list[Any]:
    """Class ids (H, W) uint8 of in-memory RGB images (H, W, 3) uint8 of any sizes, exactly as
    ``segformer inference`` computes them for image files: each image is preprocessed like the
    predict split (:func:`~segformer.data.preprocess_image` at ``img_size``), run ``batch_size``
    at a time, and the logits go through :func:`class_ids`."""
    from PIL import Image

    from segformer.data import preprocess_image

    masks = []
    for start in range(0, len(images), max(1, int(batch_size))):
        chunk = images[start:start + max(1, int(batch_size))]
        batch = torch.stack([preprocess_image(Image.fromarray(image), img_size, mean, std) for image in chunk])
        logits = run_predictor(predictor, batch)
        masks += [class_ids(predictor, image, logits[i:i + 1], img_size=img_size, mean=mean, std=std,
                            align_corners=align_corners, sliding_window=sliding_window,
                            window_overlap=window_overlap, batch_size=batch_size)
                  for i, image in enumerate(chunk)]
    return masks


def sliding_window_logits(
    predictor: Predictor,
    image: Tensor,
    window: Sequence[int],
    overlap: float = 1 / 3,
    align_corners: bool = False,
    batch_size: int = 4,
) -> Tensor:
    """Logits (1, K, H, W) of one large normalized image (1, 3, H, W) from overlapping windows.

    Windows of ``window`` = (h, w) pixels step by ``window * (1 - overlap)``; the last window in
    each direction is aligned to the border so the whole image is covered; logits of pixels seen
    by several windows are averaged. An image smaller than a window is zero-padded (normalized 0)
    and cropped back.
    """
    if not 0.0 <= overlap < 1.0:
        raise SpecError(f"inference.window_overlap must be in [0, 1), got {overlap}")
    _, _, height, width = image.shape
    win_h, win_w = int(window[0]), int(window[1])
    pad_h, pad_w = max(0, win_h - height), max(0, win_w - width)
    if pad_h or pad_w:
        image = F.pad(image, (0, pad_w, 0, pad_h))
    full_h, full_w = image.shape[-2:]
    tops = _starts(full_h, win_h, overlap)
    lefts = _starts(full_w, win_w, overlap)
    boxes = [(top, left) for top in tops for left in lefts]
    total: Tensor | None = None
    counts = torch.zeros(1, 1, full_h, full_w)
    for start in range(0, len(boxes), batch_size):
        chunk = boxes[start:start + batch_size]
        crops = torch.cat([image[:, :, t:t + win_h, l:l + win_w] for t, l in chunk])
        logits = predict_logits(predictor, crops, (win_h, win_w), align_corners).cpu()
        if total is None:
            total = torch.zeros(1, logits.shape[1], full_h, full_w)
        for (t, l), crop_logits in zip(chunk, logits):
            total[0, :, t:t + win_h, l:l + win_w] += crop_logits
            counts[0, :, t:t + win_h, l:l + win_w] += 1
    assert total is not None
    return (total / counts)[:, :, :height, :width]


def _starts(length: int, window: int, overlap: float) -> list[int]:
    if length <= window:
        return [0]
    stride = max(1, int(window * (1.0 - overlap)))
    count = math.ceil((length - window) / stride) + 1
    return sorted({min(i * stride, length - window) for i in range(count)})


def _quantized_onnx(path: Path) -> bool:
    """Whether an ONNX model holds quantized operators (QDQ or QLinear/Integer kernels)."""
    from segformer.deploy.onnx_signature import load_onnx

    graph = load_onnx(path).graph  # as its twin for TensorRT, segformer.deploy.trt.onnx_has_qdq (QDQ only)
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear") or
               node.op_type.startswith("QLinear") or node.op_type.endswith("Integer") for node in graph.node)
