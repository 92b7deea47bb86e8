"""Test-wide settings, applied before any test module imports torch or timm."""

import os

# Never reach for the network: models are built with pretrained=False or from local files.
os.environ["HF_HUB_OFFLINE"] = "1"
# pytest-xdist runs one worker per core; more threads per worker oversubscribe the 2 cores and can slow
# a test a hundredfold. Subprocesses (torchrun, the CLI) inherit this.
os.environ.setdefault("OMP_NUM_THREADS", "1")
