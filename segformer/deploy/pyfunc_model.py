"""The MLflow model-from-code file of :mod:`segformer.deploy.pyfunc`: MLflow copies it into the
model folder and runs it when the model loads (the model's ``code/`` folder, this package, is then
on ``sys.path``)."""

import mlflow.models

from segformer.deploy.pyfunc import SegformerMasks

mlflow.models.set_model(SegformerMasks())
