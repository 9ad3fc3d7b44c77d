"""Package layout that pyproject.toml alone cannot express.

The generated TAO skill files live in the top-level folders ``schemas/`` and ``templates/``
(the layout NVIDIA's skill bank uses); they are shipped inside the wheel as the package
``segformer_skill`` so that an installed ``automl``/``segformer`` finds them without a checkout.
"""
from setuptools import find_packages, setup

SKILL_FOLDERS = {
    "segformer_skill.schemas.segformer": ("schemas/segformer", ["*.json"]),
    "segformer_skill.templates.segformer": ("templates/segformer", ["*.yaml"]),
}

setup(
    packages=find_packages(include=["segformer", "segformer.*", "automl", "automl.*"]) + list(SKILL_FOLDERS),
    package_dir={name: folder for name, (folder, _) in SKILL_FOLDERS.items()},
    package_data={name: patterns for name, (_, patterns) in SKILL_FOLDERS.items()},
)
