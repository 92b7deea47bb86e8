"""rleseg: semantic, panoptic and video segmentation by language modelling of run-length-encoded masks."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # rleseg.load needs torch; importing it lazily keeps `import rleseg` (and the torch-free CLI commands) light.
    if name == "load":
        from .inference import load

        return load
    raise AttributeError(f"module 'rleseg' has no attribute {name!r}")
