"""The napari plugin (``pip install 'rleseg[napari]'``; its npe2 manifest is ``napari.yaml`` beside this file):
a widget that loads a model and predicts an image layer into a Labels layer.

:func:`segment_array` holds the logic and knows nothing of napari: an image layer's data (numpy) in, the
label array and the Labels layer's keyword arguments out, so it is tested without napari. :func:`segment_widget`
is the glue: napari builds its form from the annotations (magicgui: a dropdown of the image layers, a path
field for the model) and adds the layer it returns. Nothing here imports napari; the annotations name its
types as strings, which magicgui resolves when napari runs.

Data: (H, W) grey or (H, W, 3|4) RGB(A) images, and stacks of them, (N, H, W[, 3|4]) with frames (time
points, Z planes) first. An image model predicts a stack frame by frame, a video model as one clip
(windows of its N frames, merged per frame by vote). Values become [0, 1] by the model's stored
``data.normalize``, a stack as one, as ``rleseg predict`` reads a TIFF stack. Semantic and video models give
class labels (the layer's features name each class); panoptic models give instance ids, 1..n over the
whole stack, each with its class in the features.
"""

from __future__ import annotations

import functools
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .imageio import to_unit_float
from .inference import Predictor, load
from .models import resolve_checkpoint

if TYPE_CHECKING:  # napari is there only when napari runs the widget
    import napari


def segment_array(predictor: Predictor, data: np.ndarray, rgb: bool = False, name: str = "image"
                  ) -> tuple[np.ndarray, dict]:
    """(labels, Labels layer kwargs) for an image layer's ``data`` (``rgb``: its last axis is colour; ``name``:
    the layer's, for messages and the new layer's name). ``labels`` has the layer's shape without the colour
    axis: class ids (uint8 up to 256 classes), or instance ids for a panoptic model (0 = none). ValueError
    naming the layer for data of another shape, non-finite values, or a single image for a video model."""
    array = np.asarray(data)
    spatial = array.ndim - rgb
    if spatial not in (2, 3) or (rgb and array.shape[-1] not in (3, 4)):
        raise ValueError(f"{name}: an image layer of shape {array.shape}{' (RGB)' if rgb else ''}; expected (H, W), "
                         "(H, W, 3|4) RGB, or a stack of those (N, H, W[, 3|4]) with frames first")
    if np.issubdtype(array.dtype, np.floating) and not np.isfinite(array).all():
        raise ValueError(f"{name}: holds NaN or infinite values")
    stack, colour = spatial == 3, array[..., :3] if rgb else array
    # (N, H, W[, 3]) in [0, 1], a stack normalised as one
    frames = to_unit_float(colour if stack else colour[None], predictor.normalization)
    if predictor.frames is not None:
        if not stack:
            raise ValueError(f"{name}: a single image, but the model predicts clips of {predictor.frames} frames; "
                             "give a stack (N, H, W[, 3]) with frames first")
        labels, features = predictor.predict_video(list(frames)), _class_features(predictor.class_names)
    elif predictor.panoptic:
        labels, classes = _instances(list(predictor.run(list(frames))))
        features = {"index": list(range(len(classes))), "class": [predictor.class_names[c] for c in classes]}
    else:
        labels = np.stack([p.labels for p in predictor.run(list(frames))])
        features = _class_features(predictor.class_names)
    labels = labels if stack else labels[0]
    kind = "instances" if predictor.panoptic else "labels"
    kwargs = {"name": f"{name} {kind}", "features": features,
              "metadata": {"rleseg": {"task": predictor.tokenizer.task, "class_names": predictor.class_names,
                                      "stack": "clip" if predictor.frames else "frames" if stack else None}}}
    return labels.astype(np.min_scalar_type(max(int(labels.max(initial=0)), 255))), kwargs


def _class_features(names: list[str]) -> dict:
    return {"index": list(range(len(names))), "class": list(names)}


def _instances(predictions: list) -> tuple[np.ndarray, list[int]]:
    """(N, H, W) instance ids numbered 1..n over all frames (each frame's own ids shifted past the earlier
    frames'), and the class of each id (index 0: the background class 0): the class at the instance's first
    pixel, as a stitched instance has one class."""
    ids, classes, offset = [], [0], 0
    for prediction in predictions:
        instances = prediction.instances
        present, first = np.unique(instances, return_index=True)
        first, present = first[present > 0], present[present > 0]
        lookup = np.zeros(int(instances.max(initial=0)) + 1, np.int64)
        lookup[present] = offset + 1 + np.arange(present.size)
        ids.append(lookup[instances])
        classes += prediction.labels.ravel()[first].tolist()
        offset += present.size
    return np.stack(ids), classes


def load_predictor(model: str | Path) -> Predictor:
    """``rleseg.load(model)`` (a run folder, a .safetensors checkpoint or a model folder), kept while the
    weights file is unchanged: the widget predicts many layers with one model."""
    weights = resolve_checkpoint(model)
    return _loaded(str(weights.resolve()), weights.stat().st_mtime_ns)


@functools.lru_cache(maxsize=2)
def _loaded(weights: str, stamp: int) -> Predictor:
    return load(weights)


def segment_widget(image: napari.layers.Image, model: Path = Path()) -> napari.types.LayerDataTuple:
    """Segment with rleseg: predict the image layer with a model (a run folder, a .safetensors checkpoint or a
    folder that rleseg export wrote) into a Labels layer."""
    data = image.data[0] if image.multiscale else image.data  # the full resolution of a pyramid
    labels, kwargs = segment_array(load_predictor(model), data, image.rgb, image.name)
    return labels, {**kwargs, "scale": tuple(image.scale), "translate": tuple(image.translate)}, "labels"
