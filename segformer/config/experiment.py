"""The experiment spec: one dataclass per section of the TAO SegFormer spec.

Attribute paths are exactly TAO's spec keys (``cfg.train.optim.lr``). Defaults follow NVIDIA's
published spec templates and schemas; where TAO's documents disagree, the field's description says
which value we chose and why. Fields we add to TAO's spec say "(added)" in their description.

``ExperimentConfig.spec_source`` (a :class:`SpecSource`) is the one attribute that is not a spec
key: the loader's record of the spec a config was resolved from (see ``segformer.config.loader``).

typing.Optional/List/Dict are used on purpose: OmegaConf reads these annotations at run time.
"""
from dataclasses import dataclass
from typing import Any, Dict, List, Optional

from .fields import field_, loader_field, section

__all__ = [
    "BACKBONES",
    "ExperimentConfig",
    "WandbConfig",
    "ModelConfig",
    "BackboneConfig",
    "DecodeHeadConfig",
    "DecoderParams",
    "DatasetConfig",
    "SegmentDatasetConfig",
    "PaletteEntry",
    "AugmentationConfig",
    "RandomFlipConfig",
    "RandomRotateConfig",
    "RandomColorConfig",
    "ScaleRandomCropConfig",
    "QuantCalibrationDatasetConfig",
    "TrainConfig",
    "OptimConfig",
    "SegmentLossConfig",
    "TensorboardConfig",
    "CudnnConfig",
    "MlflowConfig",
    "EvaluateConfig",
    "InferenceConfig",
    "ExportConfig",
    "GenTrtEngineConfig",
    "TensorRTConfig",
    "CalibrationConfig",
    "QuantizeConfig",
    "SpecSource",
]

# The registered backbone names, in TAO's documented order (segformer.model registers exactly these).
BACKBONES = (
    "mit_b0", "mit_b1", "mit_b2", "mit_b3", "mit_b4", "mit_b5",
    "fan_tiny_8_p4_hybrid", "fan_small_12_p4_hybrid", "fan_base_16_p4_hybrid", "fan_large_16_p4_hybrid",
    "vit_large_nvdinov2", "vit_giant_nvdinov2",
    "vit_small_dinov3", "vit_small_plus_dinov3", "vit_base_dinov3", "vit_large_dinov3", "vit_huge_plus_dinov3",
    "vit_base_nvclip_16_siglip", "vit_huge_nvclip_14_siglip",
    "c_radio_v2_vit_base_patch16_224", "c_radio_v2_vit_large_patch16_224", "c_radio_v2_vit_huge_patch16_224",
)

_UNSET_PATH = 'Unset: null, "" or "???" in the spec.'


# --------------------------------------------------------------------------------------------- wandb
@dataclass
class WandbConfig:
    """Weights & Biases settings: accepted so NVIDIA's templates load, but never used."""

    enable: bool = field_(False, description="Log to Weights & Biases. Not implemented here (metrics go to status.json and MLflow); true only warns. Default false (NVIDIA's templates say true).", unused="Weights & Biases logging is not implemented; use train.mlflow", automl=False)
    project: str = field_("TAO Toolkit", description="W&B project (unused).", automl=False)
    entity: str = field_("", description="W&B entity (unused).", automl=False)
    group: str = field_("", description="W&B group (unused).", automl=False)
    tags: List[str] = field_(["tao-toolkit"], description="W&B tags (unused).", automl=False)
    reinit: bool = field_(False, description="W&B reinit (unused).", automl=False)
    sync_tensorboard: bool = field_(False, description="W&B sync_tensorboard (unused).", automl=False)
    save_code: bool = field_(False, description="W&B save_code (unused).", automl=False)
    name: str = field_("TAO Toolkit Training", description="W&B run name (unused).", automl=False)
    run_id: str = field_("", description="W&B run id (unused).", automl=False)


# --------------------------------------------------------------------------------------------- model
@dataclass
class BackboneConfig:
    type: str = field_("fan_small_12_p4_hybrid", description="Backbone architecture (TAO's default fan_small_12_p4_hybrid).", title="Backbone architectures", options=BACKBONES, automl=False)
    pretrained_backbone_path: Optional[str] = field_(None, description=f"Path to pretrained backbone weights: HF, NVlabs or timm files, or this tool's own (`segformer convert` writes them); a file of another backbone, or in a layout not read here, is refused. {_UNSET_PATH}", automl=False)
    freeze_backbone: bool = field_(False, description="Freeze the backbone and train only the decode head.", automl=True)
    feat_downsample: bool = field_(False, description="FAN hybrid backbones only: add a stride-2 3x3 conv on the last level so the features have strides (4, 8, 16, 32) instead of (4, 8, 16, 16) (TAO: 'Feature downsample for fan base backbone'). Other backbones warn that it has no effect.", title="Feature downsample", automl=False)


@dataclass
class DecoderParams:
    embed_dim: int = field_(768, description="Channels of the all-MLP decode head (768 for TAO's FAN/ViT, 256 for MiT-B0/B1 in the paper).", minimum=1, automl=False)


@dataclass
class DecodeHeadConfig:
    feature_strides: List[int] = field_([4, 8, 16, 32], description="Feature strides for the head. Informational: the backbone declares its strides; a mismatch only warns.", title="Feature Strides", automl=False)
    in_channels: List[int] = field_([64, 128, 320, 512], description="Decoder input channels. Informational: the backbone declares its channels; a mismatch only warns.", automl=False)
    in_index: List[int] = field_([0, 1, 2, 3], description="Which backbone levels feed the head.", title="Input Index", automl=False)
    align_corners: bool = field_(False, description="align_corners of the head's bilinear upsampling.", title="Align Corners")
    decoder_params: DecoderParams = section(DecoderParams, "Decoder parameters for the head.", title="Decoder Parameters")


@dataclass
class ModelConfig:
    backbone: BackboneConfig = section(BackboneConfig, "The backbone.")
    decode_head: DecodeHeadConfig = section(DecodeHeadConfig, "The all-MLP decode head.")


# ------------------------------------------------------------------------------------------- dataset
@dataclass
class PaletteEntry:
    """One class of the mask palette: pixels of colour ``rgb`` (or value, for grey masks) get ``label_id``."""

    seg_class: str = field_(description="Class name.")
    mapping_class: str = field_(description="Class this one is merged into (TAO); omitted in the spec: seg_class.")
    label_id: int = field_(description="Class id in 0..255; 255 marks ignored pixels. Entries sharing a mapping_class are merged into one training class, so label_id may exceed num_classes-1 (the data layer checks that the merged training ids are exactly 0..num_classes-1).", minimum=0, maximum=255)
    rgb: List[float] = field_(description="Mask value: 3 numbers (a colour) or 1 (a grey level / class id). With label_transform norm each is in 0..1 (the mask value divided by 255, e.g. 0.5; TAO: 'RGB value from 0~1'); otherwise integers in 0..255 (a grey level may go up to 65535 for 16-bit masks).")


@dataclass
class RandomFlipConfig:
    enable: bool = field_(True, description="Random flips.", automl=True)
    hflip_probability: float = field_(0.5, description="Horizontal flip probability.", minimum=0.0, maximum=1.0, automl=True, depends_on="dataset.segment.augmentation.random_flip.enable")
    vflip_probability: float = field_(0.5, description="Vertical flip probability.", minimum=0.0, maximum=1.0, automl=True, depends_on="dataset.segment.augmentation.random_flip.enable")


@dataclass
class RandomRotateConfig:
    enable: bool = field_(True, description="Random rotations by one of angle_list.", automl=True)
    rotate_probability: float = field_(0.5, description="Rotation probability.", minimum=0.0, maximum=1.0, automl=True, depends_on="dataset.segment.augmentation.random_rotate.enable")
    angle_list: List[float] = field_([90.0, 180.0, 270.0], description="Angles (degrees) to rotate by.", automl=False)


@dataclass
class RandomColorConfig:
    enable: bool = field_(True, description="Colour jitter (TAO templates: true; the doc example sets false).", automl=True)
    brightness: float = field_(0.3, description="Brightness jitter (torchvision ColorJitter).", minimum=0.0, maximum=2.0, automl=True, depends_on="dataset.segment.augmentation.random_color.enable")
    contrast: float = field_(0.3, description="Contrast jitter (torchvision ColorJitter).", minimum=0.0, maximum=2.0, automl=True, depends_on="dataset.segment.augmentation.random_color.enable")
    saturation: float = field_(0.3, description="Saturation jitter (torchvision ColorJitter).", minimum=0.0, maximum=2.0, automl=True, depends_on="dataset.segment.augmentation.random_color.enable")
    hue: float = field_(0.3, description="Hue jitter (torchvision ColorJitter requires 0 <= hue <= 0.5).", minimum=0.0, maximum=0.5, automl=True, depends_on="dataset.segment.augmentation.random_color.enable")
    color_probability: float = field_(0.5, description="Probability to apply colour jitter.", minimum=0.0, maximum=1.0, automl=True, depends_on="dataset.segment.augmentation.random_color.enable")


@dataclass
class ScaleRandomCropConfig:
    enable: bool = field_(True, description="Random rescale by a factor in scale_range, then crop to img_size.", automl=True)
    scale_range: List[float] = field_([1.0, 1.2], description="[low, high] rescale factors.", automl=False)


@dataclass
class AugmentationConfig:
    random_flip: RandomFlipConfig = section(RandomFlipConfig, "Random flip.")
    random_rotate: RandomRotateConfig = section(RandomRotateConfig, "Random rotation.")
    random_color: RandomColorConfig = section(RandomColorConfig, "Random colour jitter.")
    with_scale_random_crop: ScaleRandomCropConfig = section(ScaleRandomCropConfig, "Random rescale and crop.")
    with_random_crop: bool = field_(True, description="Random crop to img_size.")
    with_random_blur: bool = field_(True, description="Random Gaussian blur (TAO templates: true).")
    mean: List[float] = field_([0.5, 0.5, 0.5], description="Per-channel normalisation mean, images in 0..1 (TAO templates: 0.5).", automl=False)
    std: List[float] = field_([0.5, 0.5, 0.5], description="Per-channel normalisation std, images in 0..1 (TAO templates: 0.5).", automl=False)


@dataclass
class QuantCalibrationDatasetConfig:
    images_dir: Optional[str] = field_(None, description=f"Images for static PTQ calibration (quantize backend modelopt). {_UNSET_PATH}", title="images directory", automl=False)


def _default_palette() -> List[PaletteEntry]:
    return [
        PaletteEntry(seg_class="foreground", label_id=0, rgb=[0, 0, 0], mapping_class="foreground"),
        PaletteEntry(seg_class="background", label_id=1, rgb=[1, 1, 1], mapping_class="background"),
    ]


@dataclass
class SegmentDatasetConfig:
    root_dir: Optional[str] = field_(None, description="Dataset root with images/<split> and masks/<split>. Needed by train, evaluate, inference and quantize.", placeholder="???", automl=False)
    dataset: str = field_("SFDataset", description="Dataset class (TAO's only value).", options=("SFDataset",))
    num_classes: int = field_(2, description="Number of classes (label ids 0..num_classes-1; 255 is ignored).", minimum=2, math_cond=">0", automl=False)
    img_size: int = field_(256, description="Square training/evaluation input size (TAO docs and templates: 256; the doc example uses 224). ViT backbones need a multiple of their patch size: 14 for vit_*_nvdinov2 and vit_huge_nvclip_14_siglip (e.g. 224 or 448, which also suit ONNX export), 16 for the other ViTs.", minimum=32, automl=False)
    score_size: int = field_(0, description="(added) Side to which validation and evaluation masks are resized before they are scored; 0: img_size. AutoML sets it when it searches img_size, so that trials of different input sizes are scored at one size (a mask shrunk to a small input is easier to match); evaluate.full_resolution scores at each image's own size instead.", minimum=0, automl=False)
    batch_size: int = field_(8, description="Per-device batch size.", title="Batch Size", minimum=1)
    workers: int = field_(1, description="Data loader worker processes.", title="Workers", minimum=0, automl=False)
    shuffle: bool = field_(True, description="Shuffle the training set each epoch.", automl=False)
    train_split: str = field_("train", description="Train split folder name.", automl=False)
    validation_split: str = field_("val", description="Validation split folder name.", automl=False)
    test_split: str = field_("val", description="Split used by evaluate.", automl=False)
    predict_split: str = field_("test", description="Split used by inference.", automl=False)
    augmentation: AugmentationConfig = section(AugmentationConfig, "Training augmentation and normalisation.")
    label_transform: Optional[str] = field_("norm", description='Mask value transform: "norm" (mask pixel values are divided by 255 and compared with palette rgb given in 0..1, so TAO\'s default palette means a 0/255 mask) or None (YAML null or the string "None": mask values compared with palette rgb in 0..255 or with class ids).', options=("norm", "None"), automl=False)
    palette: List[PaletteEntry] = field_(_default_palette(), description="Palette; with label_transform norm RGB values are 0~1, else 0~255.", title="Palette", automl=False)
    quant_calibration_dataset: QuantCalibrationDatasetConfig = section(QuantCalibrationDatasetConfig, "Calibration images for static PTQ.")


@dataclass
class DatasetConfig:
    segment: SegmentDatasetConfig = section(SegmentDatasetConfig, "Segmentation dataset.")


# --------------------------------------------------------------------------------------------- train
@dataclass
class OptimConfig:
    optim: str = field_("adamw", description="Optimizer.", options=("adamw", "adam", "sgd"))
    lr: float = field_(6e-5, description="Learning rate. Default 6e-5 (TAO's templates, schema and doc table; the doc example uses 1e-4). AutoML samples it log-uniformly in [1e-6, 1e-2].", minimum=0.0, maximum=1.0, math_cond=">0", automl=True, automl_range=(1e-6, 1e-2), log=True)
    momentum: float = field_(0.9, description="SGD momentum for sgd; beta1 for adam/adamw (TAO's meaning).", title="momentum - AdamW (beta1)", minimum=0.0, maximum=1.0, math_cond="<1", automl=True, automl_range=(0.8, 0.99))
    weight_decay: float = field_(0.01, description="Weight decay (TAO's templates: 0.01; the doc example uses 5e-4). AutoML samples it log-uniformly in [1e-5, 0.1].", title="weight decay", minimum=0.0, maximum=1.0, automl=True, automl_range=(1e-5, 0.1), log=True)
    policy: str = field_("linear", description='Schedule: "linear" decays linearly (poly, power 1) from lr to 0 after warm-up; "step" multiplies by lr_decay at lr_steps.', options=("linear", "step"))
    monitor_name: str = field_("val_loss", description="TAO's monitor name; no effect (checkpoints and AutoML use val_miou).", unused="the monitored metric is always val_miou", automl=False)
    warmup_ratio: float = field_(0.0, description="(added) Fraction of all steps with linear warm-up from 0 to lr.", minimum=0.0, maximum=0.5)
    lr_steps: List[int] = field_([], description="(added) Milestone epochs for policy step; empty: at 2/3 and 8/9 of num_epochs.", automl=False)
    lr_decay: float = field_(0.1, description="(added) Factor applied at each lr_steps milestone (policy step).", minimum=0.0, maximum=1.0, math_cond=">0")


@dataclass
class SegmentLossConfig:
    loss: str = field_("ce", description="Segmentation loss: cross-entropy with ignore index 255.", options=("ce",))
    weights: List[float] = field_([0.5, 0.5, 0.5, 0.8, 1.0], description="TAO's multi-scale loss weights; no effect (the head has one output).", unused="the SegFormer head has a single output, so there is nothing to weight", automl=False)


@dataclass
class TensorboardConfig:
    enabled: bool = field_(False, description="Also log to TensorBoard under results_dir/train.", automl=False)
    infrequent_logging_frequency: int = field_(2, description="TAO's image-logging interval; no effect.", minimum=0, unused="TensorBoard image logging is not implemented", automl=False)


@dataclass
class CudnnConfig:
    benchmark: bool = field_(False, description="torch.backends.cudnn.benchmark.", automl=False)
    deterministic: bool = field_(True, description="Deterministic algorithms (reproducible, slightly slower).", automl=False)


@dataclass
class MlflowConfig:
    enabled: bool = field_(False, description="(added) Log params, metrics and the best checkpoint to MLflow.", automl=False)
    tracking_uri: Optional[str] = field_(None, description="(added) MLflow tracking URI; unset: MLflow's default (./mlruns or MLFLOW_TRACKING_URI).", automl=False)
    experiment_name: str = field_("segformer", description="(added) MLflow experiment name.", automl=False)


@dataclass
class TrainConfig:
    num_gpus: int = field_(1, description="GPUs to train on (ignored on a CPU-only machine).", title="Number of GPUs", minimum=1, popular=True, automl=False)
    gpu_ids: List[int] = field_([0], description="GPU ids. When their count differs from num_gpus, the larger of the two is used, numbered from 0 (as TAO's launcher does).", title="GPU IDs", popular=True, automl=False)
    num_nodes: int = field_(1, description="Nodes (multi-node when > 1).", title="Number of nodes", minimum=1, popular=True, automl=False)
    seed: int = field_(1234, description="Random seed; < 0 disables seeding.", title="Seed for randomization", minimum=-1, automl=False)
    cudnn: CudnnConfig = section(CudnnConfig, "cuDNN flags.")
    num_epochs: int = field_(10, description="Training epochs (TAO's templates and doc table: 10; the doc example uses 50).", title="Number of epochs", minimum=1, popular=True, automl=False)
    checkpoint_interval: int = field_(1, description="Save a checkpoint every N checkpoint_interval_unit (doc example: 50).", title="Checkpoint interval", minimum=1, popular=True, automl=False)
    checkpoint_interval_unit: str = field_("epoch", description="Unit of checkpoint_interval.", title="Checkpoint interval unit", options=("epoch", "step"), automl=False)
    validation_interval: int = field_(1, description="Validate every N epochs.", title="Validation interval", minimum=1, popular=True, automl=False)
    resume_training_checkpoint_path: Optional[str] = field_(None, description=f"Checkpoint to resume training from. {_UNSET_PATH}", title="Resume checkpoint path", automl=False)
    pretrained_model_path: Optional[str] = field_(None, description=f"Whole-model weights to start from. {_UNSET_PATH}", title="pretrained model path", automl=False)
    results_dir: Optional[str] = field_(None, description="Train outputs; unset: <results_dir>/train.", title="Results directory", automl=False)
    optim: OptimConfig = section(OptimConfig, "Optimizer and schedule.")
    segment: SegmentLossConfig = section(SegmentLossConfig, "Segmentation loss.")
    tensorboard: TensorboardConfig = section(TensorboardConfig, "TensorBoard logging.")
    sync_batchnorm: bool = field_(False, description="Synchronised batch norm for multi-GPU training.", automl=False)
    use_distributed_sampler: bool = field_(False, description="Lightning's distributed sampler for multi-GPU training.", automl=False)
    amp: bool = field_(True, description="(added) bf16/fp16 mixed precision on GPU; ignored on CPU.", automl=False)
    mlflow: MlflowConfig = section(MlflowConfig, "(added) MLflow tracking.")


# -------------------------------------------------------------------------------- evaluate/inference
@dataclass
class EvaluateConfig:
    num_gpus: int = field_(1, description="GPUs to evaluate on.", title="Number of GPUs", minimum=1, popular=True, automl=False)
    gpu_ids: List[int] = field_([0], description="GPU ids. When their count differs from num_gpus, the larger of the two is used, numbered from 0 (as TAO's launcher does).", title="GPU IDs", popular=True, automl=False)
    num_nodes: int = field_(1, description="Nodes.", title="Number of nodes", minimum=1, popular=True, automl=False)
    checkpoint: Optional[str] = field_(None, description="Model to evaluate: .pth (PyTorch) or .onnx (ONNX Runtime). Needed unless trt_engine is set.", title="Path to checkpoint file", placeholder="???", automl=False)
    trt_engine: Optional[str] = field_(None, description=f"TensorRT engine to evaluate instead of checkpoint. {_UNSET_PATH}", title="TensorRT Engine", automl=False)
    results_dir: Optional[str] = field_(None, description="Evaluate outputs; unset: <results_dir>/evaluate.", title="Results directory", automl=False)
    batch_size: int = field_(8, description="Batch size.", title="Batch Size", minimum=1, automl=False)
    vis_after_n_batches: int = field_(1, description="Save visualisations every N batches.", minimum=1, automl=False)
    is_quantized: bool = field_(False, description="checkpoint is a quantize artifact (TAO name).", automl=False)
    full_resolution: bool = field_(False, description="(added) Compute mIoU at each image's original size instead of img_size.", automl=False)


@dataclass
class InferenceConfig:
    num_gpus: int = field_(1, description="GPUs to run inference on.", title="Number of GPUs", minimum=1, popular=True, automl=False)
    gpu_ids: List[int] = field_([0], description="GPU ids. When their count differs from num_gpus, the larger of the two is used, numbered from 0 (as TAO's launcher does).", title="GPU IDs", popular=True, automl=False)
    num_nodes: int = field_(1, description="Nodes.", title="Number of nodes", minimum=1, popular=True, automl=False)
    checkpoint: Optional[str] = field_(None, description="Model to run: .pth (PyTorch) or .onnx (ONNX Runtime). Needed unless trt_engine is set.", title="Path to checkpoint file", placeholder="???", automl=False)
    trt_engine: Optional[str] = field_(None, description=f"TensorRT engine to run instead of checkpoint. {_UNSET_PATH}", title="TensorRT Engine", automl=False)
    results_dir: Optional[str] = field_(None, description="Inference outputs (vis_tao/, mask_tao/); unset: <results_dir>/inference.", title="Results directory", automl=False)
    batch_size: int = field_(8, description="Batch size.", title="Batch Size", minimum=1, automl=False)
    vis_after_n_batches: int = field_(1, description="Save overlays every N batches.", minimum=1, automl=False)
    is_quantized: bool = field_(False, description="checkpoint is a quantize artifact (TAO name).", automl=False)
    sliding_window: bool = field_(False, description="(added) Sliding-window inference for images much larger than img_size.", automl=False)
    window_overlap: float = field_(0.333, description="(added) Overlap of neighbouring windows (sliding_window).", minimum=0.0, maximum=0.9, automl=False)


# -------------------------------------------------------------------------------------------- export
@dataclass
class ExportConfig:
    results_dir: Optional[str] = field_(None, description="Export outputs; unset: <results_dir>/export.", title="Results directory", automl=False)
    gpu_id: int = field_(0, description="GPU used for export (CPU when none).", title="GPU ID", minimum=0, automl=False)
    checkpoint: Optional[str] = field_(None, description="Checkpoint to export.", title="checkpoint", placeholder="???", automl=False)
    onnx_file: Optional[str] = field_(None, description="ONNX file to write; unset: <export results_dir>/segformer.onnx.", title="onnx file", placeholder="???", automl=False)
    on_cpu: bool = field_(False, description="Export on CPU.", title="on cpu", automl=False)
    input_channel: int = field_(3, description="Input channels.", title="input channel", options=(1, 3), automl=False)
    input_width: int = field_(256, description="ONNX input width. Default 256 = the default img_size, as NVIDIA's export template (doc table: 960; schema: 544).", title="input width", minimum=32, automl=False)
    input_height: int = field_(256, description="ONNX input height. Default 256 = the default img_size, as NVIDIA's export template (doc table: 544; schema: 544).", title="input height", minimum=32, automl=False)
    opset_version: int = field_(17, description="ONNX opset.", title="opset version", minimum=1, automl=False)
    batch_size: int = field_(-1, description="ONNX batch size; -1: dynamic batch.", title="batch size", minimum=-1, automl=False)
    verbose: bool = field_(False, description="Verbose export logging.", title="verbose", automl=False)
    format: str = field_("onnx", description='Export format; only "onnx" is implemented ("xdl" warns and exports ONNX).', title="export format", options=("onnx", "xdl"), automl=False)
    serialize_nvdsinfer: bool = field_(False, description="TAO's switch for DeepStream configs. Export here always writes config_infer_primary_segformer.txt and labels.txt next to the ONNX file (they are small and consistent with it), so this flag changes nothing.", title="Serialize DeepStream config.", automl=False)


# ------------------------------------------------------------------------------------ gen_trt_engine
@dataclass
class CalibrationConfig:
    cal_image_dir: List[str] = field_([], description="Folders of INT8 calibration images.", automl=False)
    cal_cache_file: Optional[str] = field_(None, description="INT8 calibration cache file.", automl=False)
    cal_batch_size: int = field_(1, description="Calibration batch size.", minimum=1, popular=True, automl=False)
    cal_batches: int = field_(1, description="Calibration batches.", minimum=1, popular=True, automl=False)


@dataclass
class TensorRTConfig:
    data_type: str = field_("fp16", description="Engine precision (NVIDIA's deploy template and skill notes: fp16).", options=("fp32", "fp16", "int8"), automl=False)
    workspace_size: int = field_(1024, description="Builder workspace in MiB.", minimum=0, automl=False)
    min_batch_size: int = field_(1, description="Optimisation profile min batch.", minimum=1, popular=True, automl=False)
    opt_batch_size: int = field_(1, description="Optimisation profile opt batch.", minimum=1, popular=True, automl=False)
    max_batch_size: int = field_(1, description="Optimisation profile max batch.", minimum=1, popular=True, automl=False)
    layers_precision: List[str] = field_([], description='Per-layer precisions, "layer_name:fp32" entries.', automl=False)
    calibration: CalibrationConfig = section(CalibrationConfig, "INT8 calibration.")


@dataclass
class GenTrtEngineConfig:
    results_dir: Optional[str] = field_(None, description="Outputs; unset: <results_dir>/gen_trt_engine.", title="Results directory", automl=False)
    gpu_id: int = field_(0, description="GPU to build on.", minimum=0, popular=True, automl=False)
    onnx_file: Optional[str] = field_(None, description="ONNX model to build from.", placeholder="???", automl=False)
    trt_engine: Optional[str] = field_(None, description="Engine file to write; unset: <gen_trt_engine results_dir>/segformer.engine.", automl=False)
    batch_size: int = field_(-1, description="Engine batch size; -1: the tensorrt min/opt/max profile.", minimum=-1, popular=True, automl=False)
    verbose: bool = field_(False, description="Verbose TensorRT logging.", automl=False)
    tensorrt: TensorRTConfig = section(TensorRTConfig, "TensorRT builder settings.")


# ------------------------------------------------------------------------------------------ quantize
@dataclass
class QuantizeConfig:
    backend: str = field_("torchao", description="Quantization backend: torchao (weight-only PTQ of Linear layers), modelopt.pytorch (static PTQ, fake-quant), modelopt.onnx (Q/DQ ONNX), or onnxruntime (our addition: ONNX Runtime static int8 Q/DQ for CPU deployment).", title="Quantization backend", options=("modelopt.pytorch", "torchao", "modelopt.onnx", "onnxruntime"), automl=False)
    mode: str = field_("weight_only_ptq", description="Quantization mode (static_ptq needs dataset.segment.quant_calibration_dataset).", title="Quantization mode", options=("static_ptq", "weight_only_ptq"), automl=False)
    algorithm: str = field_("minmax", description="Calibration algorithm (modelopt backends; onnxruntime takes minmax or max; ignored by torchao).", title="Calibration algorithm", options=("minmax", "max", "entropy", "awq_clip", "awq_lite", "awq_full", "rtn_dq"), automl=False)
    layers: List[Any] = field_([], description="Per-module quantization configs (TAO Quant format).", title="Layer quantization configs", automl=False)
    skip_names: List[str] = field_([], description="Module names or patterns not to quantize.", title="Skip names", automl=False)
    model_path: Optional[str] = field_(None, description="Model to quantize (.pth; .onnx for modelopt.onnx).", title="Model path", placeholder="???", automl=False)
    backend_kwargs: Dict[str, Any] = field_({}, description="Extra keyword arguments for the backend.", title="Backend kwargs", automl=False)
    device: str = field_("cuda", description="Calibration device: cuda, cpu, trt or cuda:N (cuda falls back to cpu without a GPU).", title="Calibration device", pattern=r"^(cuda|cpu|trt|cuda:[0-9]+)$", automl=False)
    results_dir: Optional[str] = field_(None, description="Quantize outputs; unset: <results_dir>/quantize.", title="Results directory", automl=False)


# ---------------------------------------------------------------------------------------------- root
@dataclass(frozen=True)
class SpecSource:
    """What the loader resolved a config from, kept so that later overrides resolve ``${...}`` again.

    ``raw`` is the spec mapping with its overrides applied, before defaults and interpolation;
    ``resolved`` is the plain config it gave (``to_dict``). ``apply_overrides`` starts from ``raw``
    only while the config still holds ``resolved`` (a config changed since, e.g. by
    ``dataclasses.replace``, starts from its own values).
    """

    raw: Dict[str, Any]
    resolved: Dict[str, Any]


@dataclass
class ExperimentConfig:
    """A whole SegFormer experiment spec (every TAO section; each action reads the ones it needs)."""

    model_name: Optional[str] = field_(None, description="TAO's model name for model_agnostic tasks; no effect.", title="Model name", unused="there is only one model here", automl=False)
    encryption_key: Optional[str] = field_(None, description="TAO's checkpoint encryption key; no effect (checkpoints are not encrypted).", title="Encryption key", unused="checkpoints are never encrypted here", automl=False)
    results_dir: Optional[str] = field_(None, description="Root of all outputs; each action writes <results_dir>/<action> unless <action>.results_dir is set.", title="Results directory", automl=False)
    wandb: WandbConfig = section(WandbConfig, "Weights & Biases (accepted, unused).")
    model: ModelConfig = section(ModelConfig, "Model.")
    dataset: DatasetConfig = section(DatasetConfig, "Dataset.")
    train: TrainConfig = section(TrainConfig, "Train action.")
    evaluate: EvaluateConfig = section(EvaluateConfig, "Evaluate action.")
    inference: InferenceConfig = section(InferenceConfig, "Inference action.")
    export: ExportConfig = section(ExportConfig, "Export action (ONNX).")
    gen_trt_engine: GenTrtEngineConfig = section(GenTrtEngineConfig, "TensorRT engine build action.")
    quantize: QuantizeConfig = section(QuantizeConfig, "Post-training quantization action.")
    spec_source: Optional[SpecSource] = loader_field("Set by load_config/apply_overrides; not a spec key.")
