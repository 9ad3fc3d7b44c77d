"""Constants shared by the deploy tests."""

SIZE = 64
NUM_CLASSES = 3
