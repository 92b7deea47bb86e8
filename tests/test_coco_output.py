"""COCO files other tools read: ``predict --coco-json`` through pycocotools, panoptic PNGs from predict and
evaluate."""

import json

import numpy as np
import pytest
import yaml
from PIL import Image
from pycocotools import mask as mask_utils
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

import rleseg
from helpers import noisy_checkpoint
from rleseg.cli import main
from rleseg.experiment import build_datasets, config_to_dict, load_config
from rleseg.models import load_checkpoint
from rleseg.tokens import PanopticTokenizer, Tokenizer


@pytest.fixture(scope="module")
def semantic_checkpoint(tmp_path_factory):
    return noisy_checkpoint(tmp_path_factory.mktemp("sem") / "model.safetensors", Tokenizer((16, 16), 3))


@pytest.fixture(scope="module")
def panoptic_checkpoint(tmp_path_factory):
    tokenizer = PanopticTokenizer((16, 16), 3, thing_classes=[1])
    names = {"class_names": ["background", "nucleus", "tissue"]}
    return noisy_checkpoint(tmp_path_factory.mktemp("pan") / "model.safetensors", tokenizer, names)


def image_file(path, shape, seed):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray((np.random.default_rng(seed).random((*shape, 3)) * 255).astype(np.uint8)).save(path)
    return path


def run(*argv):
    return main([str(a) for a in argv] + ["--no-progress"])


def ground_truth_of(images: dict, segments: list[tuple[int, int, np.ndarray]], path) -> COCO:
    """A COCO ground truth with pycocotools' own encoding: (image id, category, binary mask) per segment."""
    annotations = []
    for number, (image_id, category, binary) in enumerate(segments, 1):
        rle = mask_utils.encode(np.asfortranarray(binary.astype(np.uint8)))
        annotations.append({"id": number, "image_id": image_id, "category_id": category, "iscrowd": 0,
                            "area": float(mask_utils.area(rle)), "bbox": mask_utils.toBbox(rle).tolist(),
                            "segmentation": {"size": rle["size"], "counts": rle["counts"].decode()}})
    path.write_text(json.dumps({**images, "annotations": annotations}))
    return COCO(str(path))


def average_precision(truth: COCO, results_file) -> float:
    evaluation = COCOeval(truth, truth.loadRes(str(results_file)), "segm")
    evaluation.evaluate()
    evaluation.accumulate()
    evaluation.summarize()
    return float(evaluation.stats[0])


def test_semantic_results_load_into_pycocotools_and_score_ap_1_against_themselves(semantic_checkpoint, tmp_path):
    inputs = [image_file(tmp_path / "in" / "a.png", (70, 90), 1), image_file(tmp_path / "in" / "b.png", (64, 64), 2),
              image_file(tmp_path / "c.png", (50, 120), 3)]
    out = tmp_path / "out"
    assert run("predict", semantic_checkpoint, tmp_path / "in", inputs[2], "--out", out, "--coco-json") == 0
    listing = json.loads((out / "images.json").read_text())
    assert [i["id"] for i in listing["images"]] == [1, 2, 3]
    assert [i["file_name"] for i in listing["images"]] == [str(p) for p in inputs]
    assert [(i["height"], i["width"]) for i in listing["images"]] == [(70, 90), (64, 64), (50, 120)]
    assert listing["categories"] == [{"id": 1, "name": "class 1"}, {"id": 2, "name": "class 2"}]
    results = json.loads((out / "predictions.json").read_text())
    assert all(isinstance(r["image_id"], int) and isinstance(r["segmentation"]["counts"], str) for r in results)

    predictor = rleseg.load(semantic_checkpoint, device="cpu")
    segments = []
    for image in listing["images"]:
        labels = np.array(Image.open(out / "labels" / f"{image['name']}.png"))
        pred = next(predictor.run([image["file_name"]]))
        assert np.array_equal(pred.labels, labels)
        mine = {r["category_id"]: r["score"] for r in results if r["image_id"] == image["id"]}
        assert set(mine) == set(np.unique(labels[labels > 0]).tolist())
        for category, score in mine.items():  # the mean per-pixel score over the class's pixels
            assert 0 < score <= 1 and score == pytest.approx(float(pred.scores[labels == category].mean()), rel=1e-5)
            segments.append((image["id"], category, labels == category))
    assert len(segments) >= 4
    truth = ground_truth_of(listing, segments, tmp_path / "truth.json")
    assert average_precision(truth, out / "predictions.json") == pytest.approx(1.0)


def panoptic_segments(out, name):
    """(segment ids (H, W) from the PNG, segments_info by id, labels, instances) of one predicted image."""
    rgb = np.array(Image.open(out / "panoptic" / f"{name}.png")).astype(np.int64)
    ids = rgb[..., 0] + 256 * rgb[..., 1] + 256**2 * rgb[..., 2]
    document = json.loads((out / "panoptic.json").read_text())
    annotation = next(a for a in document["annotations"] if a["file_name"] == f"{name}.png")
    return ids, {s["id"]: s for s in annotation["segments_info"]}, document


def check_segments_agree(ids, info, labels, instances):
    assert set(np.unique(ids[ids > 0]).tolist()) == set(info) and ((ids == 0) == (labels == 0)).all()
    for segment_id, segment in info.items():
        pixels = ids == segment_id
        rows, cols = np.nonzero(pixels)
        assert segment["area"] == pixels.sum() and segment["iscrowd"] == 0 and 0 < segment["score"] <= 1
        assert segment["bbox"] == [cols.min(), rows.min(), cols.max() - cols.min() + 1, rows.max() - rows.min() + 1]
        assert np.unique(labels[pixels]).tolist() == [segment["category_id"]]
        instance = np.unique(instances[pixels])
        assert len(instance) == 1  # a segment is one instance (or the instance-free part of a class)
        if instance[0] > 0:
            assert (pixels == (instances == instance[0])).all()


def test_panoptic_predictions_in_coco_panoptic_format(panoptic_checkpoint, tmp_path):
    image_file(tmp_path / "scene.png", (90, 110), 5)
    out = tmp_path / "out"
    argv = ("predict", panoptic_checkpoint, tmp_path / "scene.png", "--out", out, "--temperature", 1, "--seed", 0)
    assert run(*argv, "--coco-json") == 0
    labels = np.array(Image.open(out / "labels" / "scene.png"))
    instances = np.array(Image.open(out / "instances" / "scene.png"))
    ids, info, document = panoptic_segments(out, "scene")
    assert instances.max() > 0 and len(info) > instances.max()  # things and stuff
    check_segments_agree(ids, info, labels, instances)
    assert document["categories"] == [{"id": 1, "name": "nucleus", "isthing": 1},
                                      {"id": 2, "name": "tissue", "isthing": 0}]
    assert document["images"][0]["file_name"] == str(tmp_path / "scene.png")
    listing = json.loads((out / "images.json").read_text())
    assert listing["categories"] == document["categories"]
    # The results file holds the same segments: pycocotools scores them AP 1 against themselves.
    segments = [(1, s["category_id"], ids == i) for i, s in info.items()]
    truth = ground_truth_of(listing, segments, tmp_path / "truth.json")
    assert average_precision(truth, out / "predictions.json") == pytest.approx(1.0)


def test_evaluate_writes_its_panoptic_predictions(panoptic_checkpoint, tmp_path):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    config = load_config(None, [
        "data.dataset=synthetic", "data.num_classes=3", "data.patch.patch_size=64", "data.patch.factor=4",
        "data.val_options={length: 2}", "data.train_options={length: 2}", "tokenizer.task=panoptic",
        "tokenizer.thing_classes=[1]", "model.preset=tiny",
    ])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
    (run_dir / "best.safetensors").write_bytes(panoptic_checkpoint.read_bytes())
    out = tmp_path / "eval"
    assert run("evaluate", run_dir, "--out", out, "--temperature", 1, "--seed", 0) == 0
    document = json.loads((out / "panoptic.json").read_text())
    assert [i["id"] for i in document["images"]] == [1, 2]
    # The same images through a predictor seeded alike give the predictions the PNGs must hold.
    _, val = build_datasets(config, load_checkpoint(run_dir / "best.safetensors").tokenizer)
    predictor = rleseg.load(run_dir, device="cpu", temperature=1.0, seed=0)
    predictions = predictor.run([val.read(i)["image"] for i in range(2)])
    for image, annotation, pred in zip(document["images"], document["annotations"], predictions, strict=True):
        assert annotation["image_id"] == image["id"] and annotation["file_name"].endswith(f"_{image['file_name']}.png")
        ids, info, _ = panoptic_segments(out, annotation["file_name"].removesuffix(".png"))
        assert ids.shape == pred.labels.shape == (image["height"], image["width"])
        check_segments_agree(ids, info, pred.labels, pred.instances)
