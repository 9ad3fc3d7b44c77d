"""Deployment: ONNX export, ONNX Runtime / TensorRT predictors, quantization, DeepStream config.

Submodules import their heavy optional dependencies (onnxruntime, tensorrt, torchao, modelopt)
inside the functions that need them; import from the submodules directly:

- :mod:`segformer.deploy.onnx_export`: ``export_onnx``, ``onnx_parity``
- :mod:`segformer.deploy.onnx_signature`: ``read_onnx_signature``, ``OnnxSignature``
- :mod:`segformer.deploy.runtime`: ``OnnxPredictor``, ``TrtPredictor``, ``load_quantized_predictor``
- :mod:`segformer.deploy.trt`: batch profile / precision / calibrator logic and ``build_engine``
- :mod:`segformer.deploy.quantize`: torchao, ModelOpt and ONNX Runtime PTQ backends, artifacts
- :mod:`segformer.deploy.deepstream`: ``write_deepstream_config``, ``parse_nvinfer_config``
- :mod:`segformer.deploy.pyfunc`: ``save_model``, an ONNX export as an MLflow pyfunc model
  (images in, class-id masks out; imports mlflow)
"""
