"""Package layout that pyproject.toml alone cannot express.

The generated TAO skill files live in the top-level folders ``schemas/`` and ``templates/``
(the layout NVIDIA's skill bank uses); they are shipped inside the wheel as the package
``segformer_skill`` so that an installed ``automl``/``segformer`` finds them without a checkout.
"""
from setuptools import find_packages, setup

setup(
    packages=find_packages(include=["segformer", "segformer.*", "automl", "automl.*"])
    + ["segformer_skill.schemas", "segformer_skill.templates"],
    package_dir={"segformer_skill.schemas": "schemas", "segformer_skill.templates": "templates"},
)
