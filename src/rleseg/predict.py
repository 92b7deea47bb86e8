"""``rleseg predict``: label maps for images, folders of images (frame folders too) and videos.

Output folder (written atomically, as ``rleseg evaluate``'s; one that is or holds an input or the
checkpoint is refused)::

    labels/<name>.png        class labels: palette PNG (the index is the class; up to 256 classes),
                             16-bit grey PNG beyond
    instances/<name>.png     panoptic models: instance ids (0 background, 1..N objects, as StarDist and Cellpose
                             write), 16-bit grey PNG; a 32-bit TIFF ``<name>.tif`` past 65535 instances
    labels/<stem>.tif        a TIFF stack's labels as one stack of its frames, shape and axes: an ImageJ
                             hyperstack or OME-TIFF as the input was, with its pixel sizes and resolution, else
                             tifffile's shaped TIFF (8-bit, 16-bit past 256 classes)
    instances/<stem>.tif     panoptic models: the stack's instance ids likewise (16-bit, 32-bit past 65535; an
                             ImageJ stack's 32-bit ids go to OME-TIFF, which ImageJ's format cannot hold)
    overlays/<name>.png      class colours over the image, a legend of the classes below (unless --no-overlays)
    predictions.json         with --coco-json: COCO results, one compressed RLE per class (semantic) or
                             per instance and stuff class (panoptic), integer ``image_id``, category id =
                             class index (background left out), ``score`` = the mean over the segment's
                             pixels of the probability of the run that paints them (:mod:`rleseg.coco`)
    images.json              with --coco-json: the ``images`` and ``categories`` those refer to, so that
                             ``COCO("images.json").loadRes("predictions.json")`` and ``COCOeval`` take them
    panoptic/<name>.png      panoptic models: COCO panoptic segment ids (``R + 256 G + 256**2 B``)
    panoptic.json            panoptic models: COCO panoptic annotations (``segments_info`` per image, with
                             ``score``), images and categories (``isthing``)
    summary.json             images, patches, tokens, seconds, images/s, tokens/s, invalid runs, truncated
                             (dense models: no token counts, tokens/s or decoding settings)

``<name>`` is the image's stem; images of a folder ``F`` are ``F/<stem>``; frames of a video ``V.mp4``
are ``V/frame_000000`` ... Videos are read with PyAV (the ``video`` extra). A TIFF stack ``S.tif`` of
several frames (pages, time points, Z planes: ``rleseg.imageio.read_frames``) is predicted frame by
frame, as ``S/frame_000000`` ...; a folder may not hold stacks (give them as inputs of their own).
Images become [0, 1] as the model saw them in training (the checkpoint's ``data.normalize``; a stack is
normalised as one).

Video models (tokenizer task "video") take videos, TIFF stacks and frame folders only, each one sequence: it is
predicted by ``Predictor.run_video`` (windows of N frames every ``window_stride`` frames, default N,
merged per frame by vote; fewer than N frames are padded by repeating the last frame). Besides the
per-frame files, ``overlays/<sequence>.mp4`` shows the overlays as a video (PyAV, MPEG-4 part 2 codec,
the input video's frame rate, 5 fps for frame folders and stacks; sides padded to even numbers). The summary
adds ``videos`` and ``windows``.
"""

from __future__ import annotations

import dataclasses
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from .atomic import check_output_folder, output_folder
from .coco import CocoOutput
from .imageio import IMAGE_SUFFIXES, Normalization, check_pixels, frames_shape, read_frames, stack_layout
from .inference import Predictor, as_image
from .label_files import instance_dtype, save_instances, save_label_stack, save_labels
from .progress import progress as progress_bar
from .visualize import overlay, with_legend

VIDEO_SUFFIXES = (".mp4", ".avi", ".mov", ".mkv", ".webm", ".m4v", ".mpg", ".mpeg", ".gif")


@dataclass(frozen=True)
class Source:
    path: Path
    kind: str  # "image", "folder", "stack" (a TIFF of several frames) or "video"
    files: tuple[Path, ...] = ()  # the images of a folder
    frames: int = 1  # the frames of a stack


def collect_sources(paths: list[str | Path]) -> list[Source]:
    """Check every input (exists, is an image, a TIFF stack, a folder with images, or a video) before any work."""
    sources = []
    for path in map(Path, paths):
        if path.is_dir():
            files = tuple(sorted(p for p in path.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES
                                 and not p.name.startswith(".") and p.is_file()))
            if not files:
                raise ValueError(f"{path}: a folder without images; expected files ending in "
                                 f"{', '.join(IMAGE_SUFFIXES)}")
            stack = next((f for f in files if _tiff_frames(f) > 1), None)
            if stack is not None:
                raise ValueError(f"{stack}: a TIFF stack of {_tiff_frames(stack)} frames in the folder {path}; give "
                                 "stacks as inputs of their own (each is predicted frame by frame)")
            sources.append(Source(path, "folder", files))
        elif not path.exists():
            raise ValueError(f"{path}: no such file or folder")
        elif path.suffix.lower() in IMAGE_SUFFIXES:
            frames = _tiff_frames(path)
            sources.append(Source(path, "image") if frames == 1 else Source(path, "stack", frames=frames))
        elif path.suffix.lower() in VIDEO_SUFFIXES:
            _require_av()
            sources.append(Source(path, "video"))
        else:
            raise ValueError(f"{path}: not an image ({', '.join(IMAGE_SUFFIXES)}) nor a video "
                             f"({', '.join(VIDEO_SUFFIXES)}) nor a folder")
    _check_unique_names(sources)
    return sources


def _check_unique_names(sources: list[Source]) -> None:
    """ValueError naming two inputs that would write the same output: two images of one name (x.png and
    x.tif, or a/x.png and b/x.png), or two inputs whose frames go into one folder (a folder ``s`` and a
    stack or video ``s.tif``), where one's files would replace or mix with the other's."""
    owners: dict[str, tuple[int, Path]] = {}
    for index, source in enumerate(sources):
        if source.kind == "image":
            claims = [(source.path.stem, source.path)]
        else:  # a folder of outputs of its own, and within it one name per frame
            folder = source.path.name if source.kind == "folder" else source.path.stem
            claims = [(f"{folder}/", source.path)] + [(f"{folder}/{f.stem}", f) for f in source.files]
        for name, path in claims:
            other_index, other = owners.setdefault(name, (index, path))
            if other == path and other_index != index:
                raise ValueError(f"{path}: given twice as an input; give each input once")
            if other != path:
                what = f"the folder labels/{name}" if name.endswith("/") else f"labels/{name}.png"
                raise ValueError(f"{path} and {other} would both write {what}; rename one, or predict them into "
                                 "separate --out folders")


def _names(source: Source) -> list[str]:
    if source.kind == "image":
        return [source.path.stem]
    if source.kind == "stack":
        return [f"{source.path.stem}/frame_{index:06d}" for index in range(source.frames)]
    return [f"{source.path.name}/{f.stem}" for f in source.files]


def _tiff_frames(path: Path) -> int:
    """The frames of a TIFF file (its header only); 1 for other images."""
    return frames_shape(path, image=True)[0] if path.suffix.lower() in (".tif", ".tiff") else 1


def _require_av():
    try:
        import av
    except ImportError:
        raise ValueError("reading videos needs PyAV: pip install 'rleseg[video]' (or pip install av)") from None
    return av


def video_frames(path: Path, whole: bool = False) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of a video file, in order. Each frame's size is checked against the pixel
    limit (:func:`rleseg.imageio.check_pixels`) from the stream's header, before any is decoded, and when
    the caller holds the ``whole`` video, the frames so far (times their size) are, as a TIFF stack's are."""
    av = _require_av()
    try:
        with av.open(str(path)) as container:
            if not container.streams.video:
                raise ValueError(f"{path}: holds no video stream")
            stream = container.streams.video[0]
            check_pixels(path, (stream.height, stream.width))
            for index, frame in enumerate(container.decode(video=0)):
                check_pixels(path, (frame.height, frame.width))  # a stream may change size midway
                if whole:
                    check_pixels(path, (index + 1, frame.height, frame.width))
                yield frame.to_ndarray(format="rgb24")
    except av.FFmpegError as error:
        raise ValueError(f"{path}: cannot read the video ({error})") from None


def _frame_count(path: Path) -> int | None:
    av = _require_av()
    try:
        with av.open(str(path)) as container:
            return int(container.streams.video[0].frames) or None if container.streams.video else None
    except av.FFmpegError as error:
        raise ValueError(f"{path}: cannot read the video ({error})") from None


def iter_inputs(sources: list[Source], normalization: Normalization | None = None
                ) -> Iterator[tuple[np.ndarray, tuple[str, str, np.ndarray]]]:
    """(image, (output name, source description, image)) for every image and frame, read in order and
    normalised by ``normalization`` (default "auto")."""
    for source in sources:
        if source.kind == "image":
            image = as_image(source.path, normalization)
            yield image, (source.path.stem, str(source.path), image)
        elif source.kind == "folder":
            for file, name in zip(source.files, _names(source), strict=True):
                image = as_image(file, normalization)
                yield image, (name, str(file), image)
        elif source.kind == "stack":
            frames = read_frames(source.path, normalization)
            for index, (image, name) in enumerate(zip(frames, _names(source), strict=True)):
                yield image, (name, f"{source.path}#{index}", image)
        else:
            for index, frame in enumerate(video_frames(source.path)):
                image = as_image(frame, normalization)
                yield image, (f"{source.path.stem}/frame_{index:06d}", f"{source.path}#{index}", image)


def _overlay_with_legend(predictor, image: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """The class colours over the image, the legend (the checkpoint's class names and colours) below it."""
    picture = overlay(image, labels, predictor.num_classes, colours=predictor.class_colours)
    return with_legend(picture, predictor.class_names, predictor.class_colours)


def _save_stack(folder: Path, source: Source, labels: np.ndarray, instances: np.ndarray | None,
                num_classes: int) -> None:
    """``labels/<stem>.tif`` (and ``instances/<stem>.tif``) of a stack from its (N, H, W) frames' maps."""
    layout = stack_layout(source.path)
    classes = labels.astype(np.uint8 if num_classes <= 256 else np.uint16)
    save_label_stack(folder / "labels" / f"{source.path.stem}.tif", classes, layout)
    if instances is not None:
        save_label_stack(folder / "instances" / f"{source.path.stem}.tif",
                         instances.astype(instance_dtype(instances)), layout)


def coco_output(folder: Path, predictor: Predictor, coco_json: bool) -> CocoOutput:
    """What writes the COCO files of ``folder``: results with ``coco_json``, panoptic files for panoptic models."""
    things = list(predictor.tokenizer.thing_classes) if predictor.panoptic else None
    return CocoOutput(folder, predictor.class_names, coco_json, things)


FOLDER_FPS = 5  # frame rate of overlay videos made from frame folders and TIFF stacks


def predict_command(predictor: Predictor, inputs: list[str | Path], out: str | Path, *, coco_json: bool = False,
                    overlays: bool = True, overwrite: bool = False, progress: bool = True,
                    window_stride: int | None = None, checkpoint: str | Path | None = None) -> dict[str, Any]:
    """Predict every input into ``out`` (layout in the module doc); returns the summary. ``checkpoint``:
    where the predictor's model came from, which ``out`` must not replace either."""
    sources = collect_sources(inputs)
    check_output_folder(out, [s.path for s in sources] + ([] if checkpoint is None else [checkpoint]))
    if predictor.frames is not None:
        return _predict_videos(predictor, sources, out, coco_json=coco_json, overlays=overlays, overwrite=overwrite,
                               progress=progress, window_stride=window_stride)
    if window_stride is not None:
        raise ValueError("--window-stride is for video checkpoints; this one is an image model")
    total = sum(len(s.files) if s.kind == "folder" else s.frames for s in sources if s.kind != "video")
    frames = [_frame_count(s.path) for s in sources if s.kind == "video"]
    total = None if None in frames else total + sum(frames)
    counts = dict.fromkeys(("images", "patches", "tokens", "invalid_runs", "truncated", "passes"), 0)
    # A stack's frames, by output name: they come in order, their maps gathered until the last, written as one TIFF.
    stack_of = {name: source for source in sources if source.kind == "stack" for name in _names(source)}
    maps: list[tuple[np.ndarray, np.ndarray | None]] = []
    started = time.perf_counter()
    with output_folder(out, overwrite, "predict") as tmp:
        coco = coco_output(tmp, predictor, coco_json)
        stream = predictor.run_with(iter_inputs(sources, predictor.normalization))
        for pred, (name, origin, image) in progress_bar(stream, desc="predict", unit="image", enabled=progress,
                                                        total=total):
            for folder in ("labels", "overlays", "instances"):
                if folder == "labels" or (folder == "overlays" and overlays) or pred.instances is not None:
                    (tmp / folder / name).parent.mkdir(parents=True, exist_ok=True)
            save_labels(tmp / "labels" / f"{name}.png", pred.labels, predictor.num_classes, predictor.class_colours)
            if pred.instances is not None:
                save_instances(tmp / "instances" / f"{name}.png", pred.instances)
            if overlays:
                picture = _overlay_with_legend(predictor, image, pred.labels)
                Image.fromarray(picture).save(tmp / "overlays" / f"{name}.png")
            coco.add(name, origin, pred.labels, pred.instances, pred.scores)
            if name in stack_of:
                maps.append((pred.labels, pred.instances))
                if len(maps) == stack_of[name].frames:
                    labels, instances = (None if m[0] is None else np.stack(m) for m in zip(*maps, strict=True))
                    _save_stack(tmp, stack_of[name], labels, instances, predictor.num_classes)
                    maps = []
            counts["images"] += 1
            for key in ("patches", "tokens", "invalid_runs", "truncated", "passes"):
                counts[key] += pred.counts[key]
        coco.write()
        return _write_summary(tmp, predictor, counts, started, {})


def _predict_videos(predictor: Predictor, sources: list[Source], out: str | Path, *, coco_json: bool,
                    overlays: bool, overwrite: bool, progress: bool, window_stride: int | None) -> dict[str, Any]:
    for source in sources:
        if source.kind == "image":
            raise ValueError(f"{source.path}: a single image, but this checkpoint is a video model (windows of "
                             f"{predictor.frames} frames); give a video file, a TIFF stack or a folder of frames")
    counts = dict.fromkeys(("images", "videos", "windows", "patches", "tokens", "invalid_runs", "truncated", "passes"),
                           0)
    started = time.perf_counter()
    with output_folder(out, overwrite, "predict") as tmp:
        coco = coco_output(tmp, predictor, coco_json)
        for source in progress_bar(sources, desc="predict", unit="input", enabled=progress):
            norm = predictor.normalization
            if source.kind == "folder":
                frames, fps = [as_image(file, norm) for file in source.files], FOLDER_FPS
                names, origins = _names(source), [str(file) for file in source.files]
                sequence = source.path.name
            elif source.kind == "stack":
                frames, fps, sequence = list(read_frames(source.path, norm)), FOLDER_FPS, source.path.stem
                names, origins = _names(source), [f"{source.path}#{i}" for i in range(source.frames)]
            else:
                frames = [as_image(frame, norm) for frame in video_frames(source.path, whole=True)]
                fps = _frame_rate(source.path)
                sequence = source.path.stem
                names = [f"{sequence}/frame_{i:06d}" for i in range(len(frames))]
                origins = [f"{source.path}#{i}" for i in range(len(frames))]
            if not frames:
                raise ValueError(f"{source.path}: holds no frames; a video needs at least 1")
            if len({frame.shape for frame in frames}) > 1:
                raise ValueError(f"{source.path}: frames of different sizes; one video's frames must share one size")
            pred = predictor.run_video(np.stack(frames), window_stride)
            pictures = []
            for folder in ("labels", "overlays") if overlays else ("labels",):
                (tmp / folder / sequence).mkdir(parents=True, exist_ok=True)
            for image, labels, name, origin in zip(frames, pred.labels, names, origins, strict=True):
                save_labels(tmp / "labels" / f"{name}.png", labels, predictor.num_classes, predictor.class_colours)
                if overlays:
                    pictures.append(_overlay_with_legend(predictor, image, labels))
                    Image.fromarray(pictures[-1]).save(tmp / "overlays" / f"{name}.png")
                coco.add(name, origin, labels)
            if overlays:
                write_video(tmp / "overlays" / f"{sequence}.mp4", pictures, fps)
            if source.kind == "stack":
                _save_stack(tmp, source, pred.labels, None, predictor.num_classes)
            counts["images"] += len(frames)
            counts["videos"] += 1
            for key in ("windows", "patches", "tokens", "invalid_runs", "truncated", "passes"):
                counts[key] += pred.counts[key]
        coco.write()
        stride = predictor.frames if window_stride is None else window_stride
        video = {"frames": predictor.frames, "window_stride": stride}
        return _write_summary(tmp, predictor, counts, started, video)


TOKEN_COUNTS = ("tokens", "invalid_runs", "truncated", "passes")  # what a model that writes tokens counts


def _write_summary(folder: Path, predictor: Predictor, counts: dict[str, int], started: float,
                   options: dict[str, Any]) -> dict[str, Any]:
    """summary.json (the counts, speed and ``options`` beside the predictor's); returns the summary. A dense
    model's has no token counts, tokens/s or decoding settings: it writes no tokens."""
    seconds = time.perf_counter() - started
    options = {**dataclasses.asdict(predictor.options), **options}
    if predictor.model.max_seq_len is None:
        counts = {key: value for key, value in counts.items() if key not in TOKEN_COUNTS}
        options.pop("decoding")
    speed = {"tokens_per_s": counts["tokens"] / seconds} if "tokens" in counts else {}
    summary = {**counts, "seconds": round(seconds, 3), "images_per_s": counts["images"] / seconds, **speed,
               "device": str(predictor.device), "options": options}
    (folder / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    return summary


def _frame_rate(path: Path) -> Fraction | int:
    av = _require_av()
    with av.open(str(path)) as container:
        rate = container.streams.video[0].average_rate
    return Fraction(rate) if rate else FOLDER_FPS


def write_video(path: Path, frames: list[np.ndarray], fps: Fraction | int) -> None:
    """(H, W, 3) uint8 frames -> an MPEG-4 video; odd sides are padded by one black pixel (yuv420p)."""
    av = _require_av()
    height, width = frames[0].shape[:2]
    pad = ((0, height % 2), (0, width % 2), (0, 0))
    with av.open(str(path), "w") as container:
        stream = container.add_stream("mpeg4", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width + width % 2, height + height % 2, "yuv420p"
        for frame in frames:
            container.mux(stream.encode(av.VideoFrame.from_ndarray(np.pad(frame, pad), format="rgb24")))
        container.mux(stream.encode())


def summary_line(summary: dict[str, Any]) -> str:
    videos = f"{summary['videos']} videos ({summary['windows']} windows), " if "videos" in summary else ""
    if "tokens" not in summary:  # a dense model
        return (f"{summary['images']} images ({summary['patches']} patches) in {summary['seconds']:.1f} s: "
                f"{summary['images_per_s']:.2f} images/s on {summary['device']}")
    return videos + (f"{summary['images']} images ({summary['patches']} patches, {summary['tokens']} tokens) in "
            f"{summary['seconds']:.1f} s: {summary['images_per_s']:.2f} images/s, {summary['tokens_per_s']:.0f} "
            f"tokens/s on {summary['device']}; invalid runs {summary['invalid_runs']}, truncated sequences "
            f"{summary['truncated']}")
