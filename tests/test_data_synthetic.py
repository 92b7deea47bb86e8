"""Synthetic scenes and the dataset built on them: determinism, contents, tokens, loading."""

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader
from torch.utils.data.distributed import DistributedSampler

from rleseg.data import Collate, PatchConfig, SyntheticConfig, SyntheticDataset, synthetic_scene
from rleseg.tokens import EOS, PAD, Tokenizer


def test_scene_is_a_function_of_the_seed():
    config = SyntheticConfig(size=(64, 96), num_classes=5, num_shapes=(3, 8))
    a = synthetic_scene(np.random.default_rng(7), config)
    b = synthetic_scene(np.random.default_rng(7), config)
    c = synthetic_scene(np.random.default_rng(8), config)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x, y)
    assert not np.array_equal(a[1], c[1])


def test_scene_contents():
    config = SyntheticConfig(size=(64, 96), num_classes=5, num_shapes=(4, 8))
    image, semantic, instances = synthetic_scene(np.random.default_rng(1), config)
    assert image.shape == (64, 96, 3) and image.dtype == np.float32
    assert 0 <= image.min() and image.max() <= 1
    assert semantic.shape == instances.shape == (64, 96)
    assert semantic.max() < 5 and semantic.min() >= 0
    # Instances are numbered 1..n without gaps and each lies inside one class.
    ids = np.unique(instances[instances > 0])
    np.testing.assert_array_equal(ids, np.arange(1, len(ids) + 1))
    for i in ids:
        assert len(np.unique(semantic[instances == i])) == 1
    assert np.array_equal(semantic == 0, instances == 0)


def test_classes_differ_in_appearance():
    # Mean colour per class over many scenes: classes must be told apart from pixels.
    config = SyntheticConfig(size=(64, 64), num_classes=4, noise=0.0)
    means = {c: [] for c in range(4)}
    for seed in range(10):
        image, semantic, _ = synthetic_scene(np.random.default_rng(seed), config)
        for c in range(4):
            if (semantic == c).any():
                means[c].append(image[semantic == c].mean(0))
    centres = np.array([np.mean(means[c], axis=0) for c in range(4)])
    distances = np.linalg.norm(centres[:, None] - centres[None], axis=-1)
    assert distances[~np.eye(4, dtype=bool)].min() > 0.1


def test_video_shapes_move():
    config = SyntheticConfig(size=(48, 48), num_classes=3, frames=6, num_shapes=(3, 3), speed=0.05)
    image, semantic, instances = synthetic_scene(np.random.default_rng(3), config)
    assert image.shape == (6, 48, 48, 3) and semantic.shape == instances.shape == (6, 48, 48)
    assert not np.array_equal(semantic[0], semantic[-1])


def test_bad_config():
    with pytest.raises(ValueError, match="num_classes"):
        SyntheticConfig(num_classes=1)
    with pytest.raises(ValueError, match="num_shapes"):
        SyntheticConfig(num_shapes=(5, 2))


def _dataset(**kwargs):
    tokenizer = Tokenizer((16, 16), 3)
    return SyntheticDataset(tokenizer, length=12, config=SyntheticConfig(size=(64, 64)), **kwargs)


def test_sample_layout_and_tokens_decode_to_the_small_mask():
    dataset = _dataset()
    sample = dataset[3]
    assert sample["image"].shape == (3, 64, 64) and sample["image"].dtype == torch.float32
    assert sample["mask"].shape == (64, 64) and sample["mask"].dtype == torch.int64
    assert sample["mask_small"].shape == (16, 16)
    assert sample["tokens"].dtype == torch.int64 and sample["tokens"][-1] == EOS
    decoded = dataset.tokenizer.decode(sample["tokens"].numpy())
    np.testing.assert_array_equal(decoded, sample["mask_small"].numpy())


def test_patch_size_must_match_the_tokenizer():
    with pytest.raises(ValueError, match="tokenizer expects"):
        SyntheticDataset(
            Tokenizer((8, 8), 3),
            length=2,
            config=SyntheticConfig(size=(64, 64)),
            patch=PatchConfig(patch_size=64, factor=4),
        )


def test_same_seed_same_samples_and_epochs_change_augmentation():
    patch = PatchConfig(patch_size=32, factor=2, stride_range=(8, 24), rot90=True, flip=True)
    a, b = _dataset(patch=patch, seed=5), _dataset(patch=patch, seed=5)
    for i in range(0, len(a), 5):
        assert torch.equal(a[i]["image"], b[i]["image"]) and torch.equal(a[i]["tokens"], b[i]["tokens"])
    before = [a[i]["image"] for i in range(len(a))]
    a.set_epoch(1)
    after = [a[i]["image"] for i in range(len(a))]
    assert any(not torch.equal(x, y) for x, y in zip(before, after, strict=True))


def test_collate_pads_to_batch_maximum_and_counts_truncation():
    dataset = _dataset()
    samples = [dataset[i] for i in range(4)]
    lengths = [len(s["tokens"]) for s in samples]
    batch = Collate()(samples)
    assert batch["tokens"].shape == (4, max(lengths))
    assert batch["lengths"].tolist() == lengths and batch["num_truncated"] == 0
    assert torch.equal(batch["padding_mask"], batch["tokens"] == PAD)
    assert batch["image"].shape == (4, 3, 64, 64) and batch["name"] == [s["name"] for s in samples]
    cap = sorted(lengths)[1]
    batch = Collate(max_seq_len=cap)(samples)
    assert batch["tokens"].shape == (4, cap)
    assert batch["num_truncated"] == sum(n > cap for n in lengths)
    for row, sample in enumerate(samples):
        n = min(cap, len(sample["tokens"]))
        assert torch.equal(batch["tokens"][row, :n], sample["tokens"][:n])


def test_dataloader_with_two_workers_and_distributed_sampler_agree_with_direct_reads():
    patch = PatchConfig(patch_size=32, factor=2, stride_range=(16, 32), rot90=True, flip=True)
    dataset = _dataset(patch=patch, seed=3)
    loader = DataLoader(dataset, batch_size=4, num_workers=2, collate_fn=Collate())
    got = torch.cat([batch["image"] for batch in loader])
    expected = torch.stack([dataset[i]["image"] for i in range(len(dataset))])
    assert torch.equal(got, expected)
    # Two ranks of a DistributedSampler split the items; each item is the one a single process sees.
    seen = {}
    for rank in range(2):
        sampler = DistributedSampler(dataset, num_replicas=2, rank=rank, shuffle=True, seed=0)
        sampler.set_epoch(0)
        for batch in DataLoader(dataset, batch_size=3, sampler=sampler, collate_fn=Collate()):
            for index, image in zip(batch["index"].tolist(), batch["image"], strict=True):
                seen[index] = image
    assert sorted(seen) == list(range(len(dataset)))
    assert all(torch.equal(image, expected[i]) for i, image in seen.items())


def test_defaults_follow_the_tokenizer_and_the_patch():
    dataset = SyntheticDataset(Tokenizer((16, 16), 5), length=30)
    assert dataset.config.size == (128, 128) and dataset.config.num_classes == 5 and dataset.patch.factor == 8
    assert max(int(dataset[i]["mask"].max()) for i in range(len(dataset))) == 4
    # As an experiment config builds it: a patch and a YAML dict of scene fields.
    patch = PatchConfig(patch_size=64, factor=4, flip=True, rot90=True)
    dataset = SyntheticDataset(Tokenizer((16, 16), 3), length=2, patch=patch, config={"num_shapes": [1, 2]})
    assert dataset.config.size == (64, 64) and dataset.config.num_shapes == (1, 2) and len(dataset) == 2
    with pytest.raises(ValueError, match="synthetic config"):
        SyntheticDataset(Tokenizer((16, 16), 3), length=2, config={"colour": 1})
