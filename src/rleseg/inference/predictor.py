"""``rleseg.load(checkpoint)`` -> :class:`Predictor`: label maps for whole images of any size.

This is the one image-level inference path; ``rleseg predict`` and ``rleseg evaluate`` both use it:

    image -> resize by ``scale`` -> sliding-window patches of the model's input size (``stride``) ->
    :func:`~rleseg.inference.batch.predict_batch`, patches of several images sharing a batch -> each
    mask upsampled (nearest) and the patches stitched by vote at full resolution
    (:mod:`rleseg.inference.stitch`) -> label map of the image's own size.

Mode ``"patches"`` is the paper's pipeline. Mode ``"whole"`` scales the image so that its longer side
is the model input, pads it to a square (image 0) and predicts it as one patch.

Video models (tokenizer task "video", windows of N frames) go through the same patching, generation
and stitching, with a frame axis in front: ``predict_video(frames)`` cuts the sequence into windows of
N frames every ``window_stride`` frames (the last window flush with the end), cuts every window into
the same spatial patches (each patch is an (N, P, P) clip), stitches each frame of a window like an
image, and merges the windows' overlapping frames by vote (``stitch_windows``). A sequence shorter
than N frames is padded by repeating its last frame; the padded frames' outputs are dropped.

Panoptic models give (semantic, instances): both maps are stitched by the same rule (each pixel from
the patch in which it lies farthest from the border), so a pixel's class and instance come from one
patch. Instance ids are numbered 1..n per image; the instances of an object that patch borders cut are
joined first (``panoptic_join``, ``join_iou``: by their overlap where windows overlap, by their contact
across the border where they abut; see ``stitch_panoptic_patches``).

Before an image is resized, :meth:`Predictor.memory_needed` estimates the host memory it will take; an
image (at its ``scale``) above :mod:`rleseg.limits`' memory limit (``RLESEG_MEMORY_LIMIT_GB``) is refused
with the sizes instead of exhausting memory, and so are batches of patches of a model input too large.
(Just over 400 lines: the one image-level path, from a file to its stitched label map, in one place.)
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..data.patches import PatchConfig, crop, resize, scaled_shape, sliding_windows, window_starts
from ..device import resolve_device
from ..imageio import Normalization, as_rgb, read_image, to_unit_float, unit_rgb
from ..limits import check_memory
from ..models import (
    checkpoint_classes,
    load_checkpoint,
    output_factor,
    read_checkpoint_info,
    resolve_checkpoint,
    resolve_earliest_instance,
)
from ..tokens import downsample_mask
from ..typed_yaml import from_dict
from .batch import predict_batch
from .options import InferenceOptions
from .stitch import stitch_panoptic_patches, stitch_patches_of_image, stitch_score_maps, stitch_windows

ImageLike = str | Path | np.ndarray

# Host memory per pixel, measured with tracemalloc: the bilinear resize of an image keeps coordinate grids
# (about 57 bytes a pixel of the resized image) and four float32 RGB neighbour samples (48 bytes a pixel and
# frame); the stitching maps take 16 (int64 labels, two float32 vote maps); the nearest resize of the label
# map back to the image's size about 33 bytes a pixel of the image.
RESIZE_GRID_BYTES, RESIZE_SAMPLE_BYTES, STITCH_BYTES, LABELS_BACK_BYTES = 57, 48, 16, 33


@dataclass
class ImagePrediction:
    """One image's prediction and what generation did for it."""

    labels: np.ndarray  # (H, W) int64 class map at the image's size; video models: (N, H, W) per window
    instances: np.ndarray | None  # (H, W) int64 instance ids 1..n (0 = none), panoptic models only
    boxes: np.ndarray  # (K, 4) patch boxes (y0, x0, y1, x1) in the resized image
    scale: float  # the resize factor applied before patching
    tokens: list[np.ndarray] = field(default_factory=list)  # per patch: generated tokens up to EOS included
    generated_runs: int = 0  # runs the sequences stand for (tokens / tokens per run)
    invalid_runs: int = 0  # of those, runs the lenient decoder dropped (0 with constrained decoding)
    truncated: int = 0  # sequences cut by max_len (see rleseg.models.Prediction.truncated)
    passes: int = 0  # sequential decoder passes of its patches, summed (see rleseg.models.Prediction.passes)
    # (H, W) float32 per-pixel score (rleseg.inference.batch: the probability of the run that paints the pixel,
    # NaN where none does; dense models: the softmax probability of the pixel's class), taken from the patch
    # that gave the pixel its stitched label; None for video models.
    scores: np.ndarray | None = None
    run_scores: list[np.ndarray] = field(default_factory=list)  # per patch: (R,) probability of each run
    # Pixels of its patches that the boundary refiner gave another class than the decoded mask (summed over the
    # patches, before stitching; rleseg.models.Prediction.redrawn); None where no refiner ran.
    redrawn: int | None = None

    @property
    def num_tokens(self) -> int:
        return int(sum(len(t) for t in self.tokens))

    @property
    def counts(self) -> dict[str, int]:
        """What generation did, as the reports and summaries total it."""
        return {"patches": len(self.boxes), "tokens": self.num_tokens, "generated_runs": self.generated_runs,
                "invalid_runs": self.invalid_runs, "truncated": self.truncated, "passes": self.passes}


@dataclass
class VideoPrediction:
    """One sequence's prediction: per-frame labels and the generation counts of all its windows."""

    labels: np.ndarray  # (T, H, W) int64
    starts: np.ndarray  # (W,) first frame of each window (in the padded sequence if T < N)
    padded: int  # frames added by repeating the last one (T < N), their outputs dropped
    patches: int = 0  # spatial patches over all windows
    tokens: int = 0
    generated_runs: int = 0
    invalid_runs: int = 0
    truncated: int = 0
    passes: int = 0

    @property
    def counts(self) -> dict[str, int]:
        """What generation did over all windows, as the reports and summaries total it."""
        return {"windows": len(self.starts), "patches": self.patches, "tokens": self.tokens,
                "generated_runs": self.generated_runs, "invalid_runs": self.invalid_runs, "truncated": self.truncated,
                "passes": self.passes}


def load(checkpoint: str | Path, device: str | torch.device | None = None, **options: Any) -> Predictor:
    """The model of ``checkpoint`` (a ``.safetensors`` file, a run folder or a model folder that ``rleseg
    export`` wrote) as a :class:`Predictor`.

    ``options`` are :class:`InferenceOptions` fields or :class:`~rleseg.models.DecodingOptions` ones
    (:meth:`InferenceOptions.from_fields`), e.g. ``load("runs/x", mode="whole", stride=96, temperature=1.0)``.
    """
    device = resolve_device(device)
    path = resolve_checkpoint(checkpoint)
    model = load_checkpoint(path, device)
    names, colours = checkpoint_classes(path)
    return Predictor(model, InferenceOptions.from_fields(**options), device, class_names=names, class_colours=colours,
                     normalization=stored_normalization(path))


def stored_normalization(path: str | Path) -> Normalization:
    """How the model of the checkpoint at ``path`` saw image values in training (``extra["normalize"]``,
    the run's data.normalize); "auto" for a checkpoint without one (rleseg before data.normalize, which
    always normalised so)."""
    stored = read_checkpoint_info(path)[1].get("normalize")
    if stored is None:
        return Normalization()
    try:
        return from_dict(Normalization, stored, "normalize")
    except ValueError as error:
        raise ValueError(f"{path}: its extra holds a bad normalize ({error})") from None


def as_image(image: ImageLike, normalization: Normalization | None = None) -> np.ndarray:
    """A path or an array ((H, W) grey, (H, W, 3|4) or (3, H, W)) -> (H, W, 3) float32 in [0, 1].

    Files are read with ``rleseg.imageio.read_image``. Float arrays within [0, 1] are taken as they are
    (they are what the readers and datasets give); other arrays are normalised by ``normalization``
    (default "auto": uint8 / 255, deeper integers stretched as ``read_image`` does). A float array with
    values above 1 in modes "auto" and "range" is taken for 0-255 values and divided by 255 (an 8-bit image
    as floats; outside [0, 255], stretched from its percentiles), with a warning: as it is, a model trained
    on [0, 1] would see a white image.
    """
    norm = normalization or Normalization()
    if isinstance(image, str | Path):
        return read_image(image, norm)
    array = np.asarray(image)
    if not np.issubdtype(array.dtype, np.floating):
        return unit_rgb(array, norm)
    array = as_rgb(array, Path("<array>")).astype(np.float32, copy=False)
    low, high = (float(array.min()), float(array.max())) if array.size else (0.0, 0.0)
    if 0 <= low and high <= 1:
        return array
    if norm.mode in ("none", "percentile", "minmax"):
        return to_unit_float(array, norm)
    in_byte_range = 0 <= low and high <= 255
    warnings.warn("a float image with values outside [0, 1] was " + (
        "taken for 0-255 values and divided by 255, as an 8-bit image is" if in_byte_range else
        "stretched from its percentiles, as a 16-bit image is") + "; give floats in [0, 1] or integer images",
        stacklevel=3)
    if in_byte_range:
        return array / np.float32(255)
    return to_unit_float(array, Normalization("percentile", norm.low, norm.high))


class Predictor:
    """A loaded model that predicts full images (see the module doc for the pipeline).

    ``predict(image)`` -> (H, W) int64 label map, or (semantic, instances) for a panoptic model;
    ``predict_many(images)`` -> a list of those; ``run(images)`` -> :class:`ImagePrediction` per image,
    with the generation counts, batching patches across images.

    ``class_names`` (label order) and ``class_colours`` ((C, 3) RGB or None: the default palette) are what
    the checkpoint stores (:func:`load` reads them); "class 0" .. "class C-1" when not given.
    ``normalization``: how image values become [0, 1] (:func:`as_image`); :func:`load` gives the one the
    model was trained with (:func:`stored_normalization`), the default is "auto".
    """

    def __init__(self, model, options: InferenceOptions | None = None, device: str | torch.device | None = None,
                 class_names: list[str] | None = None, class_colours: list[list[int]] | None = None,
                 normalization: Normalization | None = None):
        self.options = options or InferenceOptions()
        self.normalization = normalization or Normalization()
        self.options.check()
        self.device = torch.device(device) if device is not None else next(model.parameters()).device
        self.model = model.to(self.device).eval()
        self.tokenizer = model.tokenizer
        # The share it decodes with as a number, so that summary.json and metrics.json say what ran.
        decoding = resolve_earliest_instance(self.options.decoding, self.tokenizer.task)
        self.options = dataclasses.replace(self.options, decoding=decoding)
        self.panoptic = self.tokenizer.task == "panoptic"
        self.frames = int(self.tokenizer.frames) if self.tokenizer.task == "video" else None  # window length
        self.num_classes = int(self.tokenizer.num_classes)
        self.class_names = list(class_names) if class_names is not None else [f"class {c}" for c in
                                                                             range(self.num_classes)]
        if len(self.class_names) != self.num_classes or (class_colours is not None
                                                         and len(class_colours) != self.num_classes):
            raise ValueError(f"class names or colours given for other than the model's {self.num_classes} classes")
        self.class_colours = None if class_colours is None else np.asarray(class_colours, np.uint8).reshape(-1, 3)
        self.patch_size = int(model.config.image_size)
        mask_h, mask_w = self.tokenizer.mask_size
        if mask_h != mask_w or self.patch_size % mask_h:
            raise ValueError(f"the model's input {self.patch_size} px is not a whole multiple of its square mask "
                             f"grid; got mask size {self.tokenizer.mask_size}")
        # The grid the model decides on (the tokenizer's; the dense model's is the patch's own resolution),
        # and that of the masks it gives (the patch's when it refines them): stitched as such.
        self.factor = model.grid_factor
        self.stitch_factor = output_factor(model, self.options.decoding)
        batch = self.options.batch_size * (self.frames or 1) * self.patch_size**2 * 3 * 4  # float32 RGB patches
        check_memory(f"batches of {self.options.batch_size} patches of the model's input {self.patch_size}x"
                     f"{self.patch_size} px", batch)
        self.generator = None
        if self.options.seed is not None:
            self.generator = torch.Generator(self.device).manual_seed(self.options.seed)

    # ----------------------------------------------------------------------------- public
    def predict(self, image: ImageLike) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
        return self.predict_many([image])[0]

    def predict_many(self, images: Iterable[ImageLike]) -> list:
        self._refuse_video("predict(image)")
        return [p.labels if p.instances is None else (p.labels, p.instances) for p in self.run(images)]

    def run(self, images: Iterable[ImageLike]) -> Iterator[ImagePrediction]:
        self._refuse_video("run(images)")
        for prediction, _ in self.run_with((image, None) for image in images):
            yield prediction

    def run_with(self, items: Iterable[tuple[ImageLike, Any]]) -> Iterator[tuple[ImagePrediction, Any]]:
        """``(image, anything)`` pairs -> ``(prediction, the same anything)``, in order; patches of
        consecutive images share generation batches."""
        pending: list[_Job] = []
        queue: list[tuple[_Job, int]] = []
        for image, payload in items:
            # Video models take windows: (N, H, W, 3) float arrays, made by run_video.
            job = self._start(as_image(image, self.normalization) if self.frames is None else image, payload)
            pending.append(job)
            queue += [(job, k) for k in range(len(job.boxes))]
            while len(queue) >= self.options.batch_size:
                self._generate(queue[: self.options.batch_size])
                queue = queue[self.options.batch_size :]
            while pending and pending[0].done:
                yield self._finish(pending.pop(0))
        while queue:
            self._generate(queue[: self.options.batch_size])
            queue = queue[self.options.batch_size :]
        for job in pending:
            yield self._finish(job)

    def predict_video(self, frames: Iterable[ImageLike] | np.ndarray, window_stride: int | None = None) -> np.ndarray:
        """Frames ((T, H, W, 3) array, or a list of images / paths) -> (T, H, W) int64 labels."""
        return self.run_video(frames, window_stride).labels

    def run_video(self, frames: Iterable[ImageLike] | np.ndarray, window_stride: int | None = None
                  ) -> VideoPrediction:
        """One sequence through windows of N frames every ``window_stride`` frames (default N), merged
        per frame by vote; see the module doc."""
        if self.frames is None:
            raise ValueError("this checkpoint is an image model; predict_video needs a video checkpoint "
                             "(tokenizer task 'video')")
        video = np.asarray(frames) if isinstance(frames, np.ndarray) else list(frames)
        if isinstance(video, np.ndarray) and video.ndim != 4:
            raise ValueError(f"frames must be a (T, H, W, 3) array or a list of images, got shape {video.shape}")
        if len(video) == 0:
            raise ValueError("a video needs at least 1 frame, got 0")
        video = np.stack([as_image(frame, self.normalization) for frame in video])
        if video.ndim != 4:
            raise ValueError(f"frames of one video must share one size, got {video.shape}")
        stride = self.frames if window_stride is None else int(window_stride)
        if stride < 1:
            raise ValueError(f"window stride must be a positive number of frames, got {stride}")
        count, padded = len(video), max(0, self.frames - len(video))
        if padded:
            video = np.concatenate([video, np.repeat(video[-1:], padded, axis=0)])
        starts = window_starts(len(video), self.frames, stride)
        windows = ((video[s : s + self.frames], None) for s in starts)
        labels, totals = [], Counter()
        for pred, _ in self.run_with(windows):
            labels.append(pred.labels)
            totals.update(pred.counts)
        merged = stitch_windows(np.stack(labels), starts, len(video), self.num_classes)[:count]
        return VideoPrediction(merged, starts, padded, **totals)

    def patch_config(self, scale: float) -> PatchConfig:
        return PatchConfig(patch_size=self.patch_size, factor=self.stitch_factor, scale=scale)

    def scale_for(self, shape: tuple[int, int]) -> float:
        """The resize factor applied to an image of ``shape`` before patching."""
        if self.options.mode == "whole":
            return self.patch_size / max(shape)
        return self.options.scale

    def memory_needed(self, shape: tuple[int, int]) -> int:
        """Bytes of host memory an image (a video window) of ``shape`` (H, W) takes on its way through the
        predictor, roughly: its bilinear resize, the stitching maps, the label map resized back and one
        batch of patches (the constants above)."""
        resized = scaled_shape(shape, self.scale_for(shape))
        pixels, frames = math.prod(resized), self.frames or 1
        need = STITCH_BYTES * pixels + self.options.batch_size * frames * self.patch_size**2 * 3 * 4
        if tuple(resized) != tuple(shape):
            need += (RESIZE_GRID_BYTES + RESIZE_SAMPLE_BYTES * frames) * pixels
            need += LABELS_BACK_BYTES * frames * math.prod(shape)
        return need

    def label_patch(self, labels: np.ndarray, scale: float, box: np.ndarray, fill: int) -> np.ndarray:
        """(H, W) labels of an image -> those of one of its patches on the model's mask grid, cut as the
        image was: resized by ``scale`` (nearest), ``box`` cut out (``fill`` past the border), subsampled by
        ``factor`` (nearest). What the model would have had to generate for that patch."""
        labels = np.asarray(labels, np.int64)
        resized = resize(labels, scaled_shape(labels.shape, scale), -2, linear=False)
        return downsample_mask(crop(resized, box, fill, -2), self.factor, "nearest")

    # ----------------------------------------------------------------------------- internals
    def _refuse_video(self, call: str) -> None:
        if self.frames is not None:
            raise ValueError(f"this checkpoint is a video model (windows of {self.frames} frames); {call} takes "
                             "single images: use predict_video(frames)")

    def _start(self, image: np.ndarray, payload: Any) -> _Job:
        # Images (H, W, 3) or video windows (N, H, W, 3): the spatial axes are -3 and -2 in both.
        shape = image.shape[-3:-1]
        scale = self.scale_for(shape)
        # The stitching maps alone, in floats: a scale of 1e300 is refused here, before sizes become integers.
        check_memory(f"predicting a {shape[0]}x{shape[1]} image at scale {scale:g}",
                     STITCH_BYTES * (shape[0] * scale) * (shape[1] * scale))
        height, width = scaled_shape(shape, scale)
        check_memory(f"predicting a {shape[0]}x{shape[1]} image at scale {scale:g} ({height:,}x{width:,} pixels "
                     "resized)", self.memory_needed(shape))
        resized = resize(image, (height, width), -3, linear=True)
        boxes = sliding_windows(resized.shape[-3:-1], self.patch_size, self.options.stride)
        crops = [crop(resized, box, 0.0, -3) for box in boxes]
        return _Job(shape, scale, boxes, crops, [None] * len(boxes), payload)

    def _generate(self, batch: list[tuple[_Job, int]]) -> None:
        images = torch.from_numpy(np.stack([job.crops[k] for job, k in batch])).movedim(-1, -3)
        out = predict_batch(self.model, images.to(self.device), self.options, self.generator)
        for b, (job, k) in enumerate(batch):
            job.results[k] = (out.masks[b], out.tokens[b], out.runs[b], bool(out.truncated[b]), out.run_scores[b],
                              out.score_maps[b], int(out.passes[b]), None if out.redrawn is None else
                              int(out.redrawn[b]))
            job.crops[k] = None  # the pixels are no longer needed

    def _finish(self, job: _Job) -> tuple[ImagePrediction, Any]:
        masks, tokens, runs, truncated, run_scores, score_maps, passes, redrawn = zip(*job.results, strict=True)
        config = self.patch_config(job.scale)
        instances = None
        if self.panoptic:
            semantic, ids = (np.stack([mask[i] for mask in masks]) for i in (0, 1))  # (K, h, w) each
            labels, instances = stitch_panoptic_patches(semantic, ids, job.boxes, config, job.shape, self.num_classes,
                                                        self.options.panoptic_join, self.options.join_iou)
        elif self.frames is not None:  # (K, N, h, w): each frame of the window stitched like an image
            stack = np.stack(masks)
            labels = np.stack([stitch_patches_of_image(stack[:, f], job.boxes, config, job.shape, self.num_classes)
                               for f in range(stack.shape[1])])
        else:
            semantic = np.stack(masks)
            labels = stitch_patches_of_image(semantic, job.boxes, config, job.shape, self.num_classes)
        scores = None
        if self.frames is None:
            scores = stitch_score_maps(np.stack(score_maps), semantic, job.boxes, config, labels)
        generated, kept = np.sum(runs, axis=0)
        prediction = ImagePrediction(
            labels=labels.astype(np.int64),
            instances=instances,
            boxes=job.boxes,
            scale=job.scale,
            tokens=list(tokens),
            generated_runs=int(generated),
            invalid_runs=int(generated - kept),
            truncated=sum(truncated),
            passes=sum(passes),
            scores=scores,
            run_scores=list(run_scores),
            redrawn=None if None in redrawn else sum(redrawn),
        )
        return prediction, job.payload


@dataclass
class _Job:
    """One image (or video window) on its way through the predictor."""

    shape: tuple[int, int]  # (H, W) of the image as given
    scale: float
    boxes: np.ndarray  # (K, 4) patches in the resized image
    crops: list  # per patch: its pixels until generated, then None
    # per patch: (mask, tokens, (generated, kept) runs, truncated, run scores, score map, passes, redrawn pixels)
    results: list
    payload: Any

    @property
    def done(self) -> bool:
        return all(r is not None for r in self.results)
