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

# action name -> (what it needs, what it writes, an example): the epilog of `segformer <action> --help`.
# Wherever a model file is asked for, a results folder of the action that wrote it also does (`segformer.parents`).
USAGE: dict[str, tuple[str, str, str]] = {
    "train": ("dataset.segment.root_dir (images/ and masks/ per split), results_dir",
              "<results_dir>/train (or train.results_dir): model_epoch_EEE_step_SSSSS.pth, segformer_model_latest.pth, "
              "status.json (one line per epoch), experiment.yaml (the spec as run)",
              "segformer train -e spec.yaml results_dir=/r train.num_epochs=50 train.optim.lr=6e-5"),
    "evaluate": ("dataset.segment.root_dir, results_dir, evaluate.checkpoint (.pth, .onnx or a results folder such "
                 "as <results_dir>/train) or evaluate.trt_engine",
                 "<results_dir>/evaluate: results.json (mIoU, mAcc, aAcc, per class), confusion_matrix.png, vis/ "
                 "(with evaluate.vis_after_n_batches)",
                 "segformer evaluate -e spec.yaml results_dir=/r evaluate.checkpoint=/r/train"),
    "inference": ("dataset.segment.root_dir (its predict_split), results_dir, inference.checkpoint or "
                  "inference.trt_engine, as for evaluate",
                  "<results_dir>/inference: vis_tao/ (class-id PNGs) and mask_tao/ (overlays), at each image's size",
                  "segformer inference -e spec.yaml results_dir=/r inference.checkpoint=/r/train"),
    "export": ("export.checkpoint (.pth or a train results folder), results_dir; export.input_height/input_width "
               "(the trained size) and export.batch_size (-1: dynamic)",
               "export.onnx_file (default <results_dir>/export/segformer.onnx) and a DeepStream config and labels.txt "
               "beside it",
               "segformer export -e spec.yaml results_dir=/r export.checkpoint=/r/train export.input_height=512 "
               "export.input_width=512"),
    "quantize": ("quantize.model_path (.pth, .onnx or a results folder), results_dir, calibration images "
                 "(dataset.segment.quant_calibration_dataset.images_dir, else the train split)",
                 "<results_dir>/quantize: quantized_model_<backend>.onnx or .pth and quantize_report.json (the float "
                 "and quantized scores)",
                 "segformer quantize -e spec.yaml results_dir=/r quantize.model_path=/r/export quantize.backend=onnxruntime"),
    "gen_trt_engine": ("gen_trt_engine.onnx_file (.onnx or an export/quantize results folder), results_dir; TensorRT "
                       "and a CUDA GPU",
                       "gen_trt_engine.trt_engine (default <results_dir>/gen_trt_engine/segformer.engine); int8: "
                       "a calibration cache beside it",
                       "segformer gen_trt_engine -e spec.yaml results_dir=/r gen_trt_engine.onnx_file=/r/export "
                       "gen_trt_engine.tensorrt.data_type=fp16"),
}

__all__ = ["ACTIONS", "USAGE"]
