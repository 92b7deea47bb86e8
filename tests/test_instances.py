"""Class maps -> instances for the dense baseline of a panoptic task (models/instances.py): connected
components against skimage's (the test oracle; nothing at run time uses it), the boundary band, seeded
growth, both rules, and the dense model that composes them (training targets, predictions, configs)."""

import csv
import json
from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from skimage.measure import label as skimage_label

from rleseg.cli import main
from rleseg.data.bundled import bundled_split
from rleseg.experiment import build_model, build_tokenizer, load_config
from rleseg.inference import InferenceOptions, Predictor
from rleseg.models import DENSE_PRESETS, create_model
from rleseg.models.instances import Components, Interiors, boundary_band, grow_seeds, instance_rule, label_regions
from rleseg.tokens import PanopticTokenizer, Tokenizer, upsample_mask


def random_maps(rng: np.random.Generator, count: int, shape: tuple[int, int], values: int, cell: int) -> np.ndarray:
    """(count, H, W) int64 maps of ``values`` values (0 included) in blocks of ``cell`` pixels: noise at 1."""
    small = rng.integers(0, values, (count, -(-shape[0] // cell), -(-shape[1] // cell)))
    return np.stack([upsample_mask(m, cell, shape) for m in small]).astype(np.int64)


@pytest.mark.parametrize("connectivity", [1, 2])
@pytest.mark.parametrize(("values", "cell"), [(2, 1), (4, 1), (2, 3), (5, 2)])
def test_components_are_skimages(connectivity, values, cell):
    rng = np.random.default_rng(values * 10 + cell)
    maps = random_maps(rng, 6, (23, 31), values, cell)
    ours = label_regions(torch.from_numpy(maps), connectivity).numpy()
    for mine, values_map in zip(ours, maps, strict=True):
        np.testing.assert_array_equal(mine, skimage_label(values_map, background=0, connectivity=connectivity))


def test_components_of_a_winding_path_and_of_empty_and_full_maps():
    """A long winding region (the worst case of label propagation) is one region; nothing is nothing."""
    snake = np.zeros((41, 41), np.int64)
    snake[::2] = 1  # every other row, joined at alternate ends: one path of about 860 pixels
    snake[1::4, -1] = snake[3::4, 0] = 1
    maps = np.stack([snake, np.zeros_like(snake), np.full_like(snake, 3)])
    ours = label_regions(torch.from_numpy(maps)).numpy()
    for mine, values_map in zip(ours, maps, strict=True):
        np.testing.assert_array_equal(mine, skimage_label(values_map, background=0, connectivity=1))
    assert ours[0].max() == 1 and ours[1].max() == 0 and ours[2].max() == 1


def test_boundary_band_lies_inside_objects_along_their_edges():
    instances = np.zeros((1, 12, 16), np.int64)
    instances[0, 2:10, 1:7] = 4  # two touching objects and one cut by the map's border
    instances[0, 2:10, 7:12] = 9
    instances[0, 0:5, 13:16] = 2
    for width in (1, 2):
        band = boundary_band(torch.from_numpy(instances), width).numpy()[0]
        assert not band[instances[0] == 0].any()
        # A pixel is in the band exactly when another id lies within ``width`` (max norm) inside the map.
        padded = np.pad(instances[0], width, mode="edge")
        for y, x in zip(*np.nonzero(instances[0]), strict=True):
            window = padded[y : y + 2 * width + 1, x : x + 2 * width + 1]
            assert band[y, x] == (window != instances[0, y, x]).any(), (width, y, x)
        assert not band[0, 15] and band[4, 15]  # the map's border is no edge; the object's lower edge is


def test_seeds_grow_over_their_region_only_to_the_nearest_seed():
    seeds = torch.zeros(1, 5, 12, dtype=torch.long)
    seeds[0, 2, 1], seeds[0, 2, 10] = 1, 2
    region = torch.zeros(1, 5, 12, dtype=torch.bool)
    region[0, 1:4, :] = True
    region[0, :, 5] = False  # a gap: the right half grows from seed 2 only
    grown = grow_seeds(seeds, region)[0]
    assert (grown[1:4, :5] == 1).all() and (grown[1:4, 6:] == 2).all()
    assert (grown[0] == 0).all() and (grown[4] == 0).all() and (grown[:, 5] == 0).all()


def _touching_discs() -> tuple[np.ndarray, np.ndarray]:
    """Semantic (1 where an object is) and instances of two discs that touch, and a small separate one."""
    yy, xx = np.mgrid[:40, :48]
    instances = np.zeros((40, 48), np.int64)
    instances[(yy - 20) ** 2 + (xx - 12) ** 2 <= 100] = 1
    instances[((yy - 20) ** 2 + (xx - 31) ** 2 <= 100) & (instances == 0)] = 2
    instances[(yy - 5) ** 2 + (xx - 43) ** 2 <= 4] = 3
    return (instances > 0).astype(np.int64), instances


def test_components_merge_touching_objects_and_interiors_keep_them_apart():
    semantic, instances = _touching_discs()
    labels = torch.from_numpy(semantic)[None]
    components = Components(2, [1])
    assert components.outputs == 2 and components.target_keys == ("mask",)
    sem, ids = (m[0].numpy() for m in components(labels))
    np.testing.assert_array_equal(sem, semantic)
    assert ids.max() == 2  # the touching discs are one component, the small disc another
    interiors = Interiors(2, [1], width=2)
    assert interiors.outputs == 3 and interiors.target_keys == ("mask", "instances")
    # The training target of the truth, predicted perfectly, gives back every object exactly.
    target = interiors.targets(labels, torch.from_numpy(instances)[None])
    assert set(np.unique(target.numpy())) == {0, 1, 2}
    sem, ids = (m[0].numpy() for m in interiors(target))
    np.testing.assert_array_equal(sem, semantic)
    assert ids.max() == 3
    # Each true object is one predicted object but for pixels equally near two interiors (ties: the larger id).
    majority = [np.bincount(ids[instances == k]).argmax() for k in (1, 2, 3)]
    assert sorted(majority) == [1, 2, 3]
    assert all((ids[instances == k] == m).mean() > 0.99 for k, m in zip((1, 2, 3), majority, strict=True))
    # Ignored pixels stay ignored in the target.
    ignored = labels.clone()
    ignored[0, :3] = 255
    assert (interiors.targets(ignored, torch.from_numpy(instances)[None])[0, :3] == 255).all()


def test_boundary_no_interior_reaches_is_an_object_of_its_own():
    labels = torch.zeros(1, 10, 10, dtype=torch.long)
    labels[0, 1:3, 1:3] = 2  # all boundary: a small object
    labels[0, 5:9, 5:9] = 2
    labels[0, 6:8, 6:8] = 1  # an interior with its ring
    semantic, ids = (m[0].numpy() for m in Interiors(2, [1], 1)(labels))
    assert set(np.unique(semantic)) == {0, 1}
    assert len(np.unique(ids[1:3, 1:3])) == 1 and len(np.unique(ids[5:9, 5:9])) == 1
    assert ids[1, 1] != ids[6, 6] and ids.max() == 2 and (ids[semantic == 0] == 0).all()


def test_rules_refuse_what_they_cannot_do():
    with pytest.raises(ValueError, match="exactly one thing class"):
        instance_rule("interiors", 4, [1, 2], 2)
    with pytest.raises(ValueError, match=r"model.instances must be one of components, interiors"):
        instance_rule("watershed", 2, [1], 2)
    assert instance_rule(None, 2, [], 2) is None
    panoptic, semantic = PanopticTokenizer((16, 16), 2, [1]), Tokenizer((16, 16), 2)
    dense = replace(DENSE_PRESETS["tiny"], backbone="test_resnet", image_size=64, width=16)
    with pytest.raises(ValueError, match=r"model.instances None with a panoptic task"):
        create_model(dense, panoptic)
    with pytest.raises(ValueError, match=r"model.instances 'components' with a semantic task"):
        create_model(replace(dense, instances="components"), semantic)


@pytest.mark.parametrize("rule", ["components", "interiors"])
def test_dense_panoptic_model_learns_and_predicts_instance_pairs(rule):
    """A few steps on touching discs: the loss falls, and predictions are (semantic, instances) pairs that the
    predictor stitches into an image's instance map (what evaluate and predict score and write)."""
    torch.manual_seed(0)
    semantic, instances = (np.pad(m, ((0, 24), (0, 16))) for m in _touching_discs())  # 64 x 64
    semantic, instances = np.stack([semantic, semantic.T]), np.stack([instances, instances.T])
    images = torch.from_numpy(np.repeat(semantic[:, None], 3, 1).astype(np.float32) * 0.8 + 0.1)
    masks, ids = torch.from_numpy(semantic), torch.from_numpy(instances)
    dense = replace(DENSE_PRESETS["tiny"], backbone="test_resnet", image_size=64, width=16, instances=rule)
    model = create_model(dense, PanopticTokenizer((16, 16), 2, [1]))
    assert model.num_classes == (2 if rule == "components" else 3)
    targets = {"mask": masks, "instances": ids}
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    losses = []
    for _ in range(15):
        loss = model.loss(images, *(targets[key] for key in model.target_keys))
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    prediction = model.predict(images)
    sem, inst = prediction.masks[0]
    assert sem.shape == inst.shape == (64, 64) and set(np.unique(sem)) <= {0, 1}
    assert ((inst > 0) == (sem == 1)).all()
    image = np.repeat(semantic[0, :56, :, None], 3, -1).astype(np.float32) * 0.8 + 0.1  # 56 x 64: two patches
    labels, stitched = Predictor(model, InferenceOptions(stride=32)).predict(image)
    assert labels.shape == stitched.shape == (56, 64) and ((stitched > 0) == (labels == 1)).all()


@pytest.mark.parametrize("name", ["stardist-panoptic-dense", "stardist-panoptic-dense3", "trackastra-panoptic-dense",
                                  "trackastra-panoptic-dense3"])
def test_dense_panoptic_configs_build_their_rule(name):
    config = load_config(name)
    model = build_model(config, build_tokenizer(config))
    assert model.tokenizer.task == "panoptic"
    assert model.config.instances == ("interiors" if name.endswith("3") else "components")
    token = load_config(name.removesuffix("3").removesuffix("-dense"))
    assert (token.data, token.train.steps) == (config.data, config.train.steps)  # the same data and budget


# Seconds of training: 64-pixel patches, a narrow decoder, two steps.
DENSE_TINY = ["model.dim=16", "data.patch.patch_size=64", "data.patch.stride_range=[32, 64]", "train.steps=2",
              "train.batch_size=4", "train.warmup_steps=1", "eval.max_samples=4", "eval.batch_size=4",
              "output.tensorboard=false", "output.pictures=1"]


@pytest.mark.parametrize("name", ["stardist-panoptic-dense", "stardist-panoptic-dense3"])
def test_a_dense_panoptic_run_is_scored_and_predicted_as_instances(name, tmp_path):
    """rleseg train, evaluate and predict on a dense panoptic config: PQ and object counts in the reports,
    instance label maps and COCO panoptic files in the outputs, as for a token model."""
    run, evaluated, predicted = tmp_path / "run", tmp_path / "eval", tmp_path / "pred"
    sets = [arg for override in DENSE_TINY for arg in ("--set", override)]
    assert main(["train", name, "--out", str(run), "--no-progress", *sets]) == 0
    assert {"pq", "sq", "rq"} <= set(json.loads((run / "metrics.json").read_text())["panoptic"]["all"])
    assert main(["evaluate", str(run), "--out", str(evaluated), "--no-progress"]) == 0
    objects = json.loads((evaluated / "metrics.json").read_text())["panoptic"]["objects"]
    truth = bundled_split("stardist", "val").instances[0]
    assert objects["true"] == len(np.unique(truth[truth > 0]))  # every nucleus of the validation strip
    assert "| true objects | predicted | matched | precision | recall | F1 at IoU 0.5 |" in (
        evaluated / "metrics.md").read_text()
    with open(evaluated / "per_image.csv") as table:
        row = next(csv.DictReader(table))
    assert int(row["objects"]) == objects["true"] and int(row["predicted_objects"]) == objects["predicted"]
    assert (evaluated / "panoptic.json").is_file()
    image = tmp_path / "nuclei.png"
    Image.fromarray((bundled_split("stardist", "val").images[0] * 255).astype(np.uint8)).save(image)
    assert main(["predict", str(run), str(image), "--out", str(predicted), "--no-progress"]) == 0
    instances = np.asarray(Image.open(next((predicted / "instances").iterdir())))
    labels = np.asarray(Image.open(next((predicted / "labels").iterdir())))
    assert instances.shape == labels.shape == truth.shape and ((instances > 0) == (labels == 1)).all()
