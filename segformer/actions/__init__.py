"""Actions: ``segformer.actions.<name>.run(cfg) -> Result`` for each TAO action.

Every action is an in-process function taking a validated ``ExperimentConfig`` and returning a
small frozen dataclass; the CLI and AutoML call them exactly the same way. This package imports
nothing heavy: each action module imports torch and friends itself, so ``segformer --help`` stays
fast.
"""

ACTIONS = ("train", "evaluate", "inference", "export", "quantize", "gen_trt_engine")

__all__ = ["ACTIONS"]
