"""SegFormer semantic segmentation toolkit, compatible with NVIDIA TAO SegFormer specs.

Importing this package is cheap on purpose (no torch): the command-line tools answer ``--help``
instantly, and the heavy pieces load only in the actions that need them.
"""

__version__ = "0.1.0"
