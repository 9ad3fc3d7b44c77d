"""Post-training quantization backends (TAO Quant names) and their artifacts.

- ``torch_backends``: ``torchao`` (int8 weight-only) and ``modelopt.pytorch`` (int8 static PTQ)
- ``modelopt_onnx``: ``modelopt.onnx`` (int8 Q/DQ ONNX)
- ``ort_static``: ``onnxruntime`` (int8 Q/DQ ONNX for CPU deployment)
- ``artifacts``: save/reload ``quantized_model_*.pth``; ``patterns``: layers / skip_names

Imports nothing heavy (no torch): `automl.promote` and `segformer.parents` read the names below.
"""

# The backends that quantize an ONNX model (`segformer quantize` exports a .pth model_path first).
ONNX_BACKENDS = ("modelopt.onnx", "onnxruntime")
