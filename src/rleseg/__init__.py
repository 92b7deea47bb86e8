"""rleseg: semantic, panoptic and video segmentation by language modelling of run-length-encoded masks."""

__version__ = "0.1.0"
