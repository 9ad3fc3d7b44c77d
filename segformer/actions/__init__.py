"""Actions: ``segformer.actions.<name>.run(cfg) -> Result`` for each TAO action.

Every action is an in-process function taking a validated ``ExperimentConfig`` and returning a
small frozen dataclass; the CLI and AutoML call them exactly the same way. :data:`ACTIONS` is the
one list of actions (the CLI, the schema generator and ``segformer validate`` read it). This package
imports nothing heavy: each action module imports torch and friends itself, so ``segformer --help``
stays fast.
"""

# action name -> one-line help; the action is the function ``run`` of ``segformer.actions.<name>``
ACTIONS: dict[str, str] = {
    "train": "train a SegFormer model on an image/mask folder dataset",
    "evaluate": "mIoU, mAcc, aAcc and per-class scores of a checkpoint, ONNX file or engine",
    "inference": "write class-id masks (vis_tao) and overlays (mask_tao) for predict_split",
    "export": "export a checkpoint to ONNX (and a DeepStream config)",
    "quantize": "post-training quantization (torchao, modelopt, ONNX Runtime int8)",
    "gen_trt_engine": "build a TensorRT engine from the ONNX file",
}

__all__ = ["ACTIONS"]
