"""rleseg.stats: token statistics against a direct computation, and the fidelity of subsampling."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import tifffile
from PIL import Image

from rleseg.imageio import MaskError, read_label_map
from rleseg.stats import StatsOptions, find_masks, folder_stats, image_stats
from rleseg.tokens import Tokenizer, downsample_mask


def _random_masks(seed: int, sizes, num_classes: int) -> list[tuple[str, np.ndarray]]:
    """Blocky random label maps (runs of several pixels), so run counts vary between masks."""
    rng = np.random.default_rng(seed)
    masks = []
    for i, (h, w) in enumerate(sizes):
        coarse = rng.integers(0, num_classes, size=(h // 3 + 1, w // 5 + 1))
        mask = np.kron(coarse, np.ones((3, 5), np.int64))[:h, :w].astype(np.uint8)
        masks.append((f"mask{i}", mask))
    return masks


def _quantile(values: list[int], q: float) -> int:
    """Smallest value with at least q% of the values <= it."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


SIZES = [(40, 40), (40, 40), (37, 53), (40, 40), (21, 8), (40, 40), (40, 40)]


@pytest.mark.parametrize("order", ["C", "F"])
def test_token_statistics_equal_direct_computation(order):
    masks = _random_masks(0, SIZES, 4)
    options = StatsOptions(factors=(1, 2, 3), order=order, max_run=None)
    stats = image_stats(masks, options)
    assert stats.num_classes == 4 and stats.num_images == len(masks)
    assert {(r.scheme, r.starts, r.factor) for r in stats.rows} == {
        (s, st, f) for s in ("lac", "class") for st in ("1d", "2d") for f in (1, 2, 3)
    }
    for row in stats.rows:
        lengths, vocab = [], 0
        for _, mask in masks:
            small = downsample_mask(mask, row.factor)
            tokenizer = Tokenizer(small.shape, 4, row.scheme, row.starts, order)
            lengths.append(len(tokenizer.encode(small)))
            vocab = max(vocab, tokenizer.vocab.size)
        assert row.mean == pytest.approx(np.mean(lengths))
        assert (row.p50, row.p95, row.p99, row.max) == (
            _quantile(lengths, 50), _quantile(lengths, 95), _quantile(lengths, 99), max(lengths)
        )
        assert row.vocab_size == vocab
        assert row.mask_size == (math.ceil(37 / row.factor), math.ceil(53 / row.factor))  # the most pixels
        assert row.truncated is None
    assert any(r.p50 != r.max for r in stats.rows), "masks should differ in length"


def test_binary_scheme_only_for_two_classes():
    two = image_stats(_random_masks(1, [(16, 16)] * 3, 2), StatsOptions(factors=(1,)))
    assert {r.scheme for r in two.rows} == {"lac", "class", "binary"}
    binary = next(r for r in two.rows if (r.scheme, r.starts) == ("binary", "1d"))
    lac = next(r for r in two.rows if (r.scheme, r.starts) == ("lac", "1d"))
    assert binary.mean == lac.mean  # both take 2 tokens per run
    three = image_stats(_random_masks(1, [(16, 16)] * 3, 3), StatsOptions(factors=(1,)))
    assert {r.scheme for r in three.rows} == {"lac", "class"}
    assert any("binary" in note for note in three.notes)
    # A folder whose first masks look binary and a later one holds label 2.
    mixed = _random_masks(2, [(16, 16)] * 2, 2) + _random_masks(3, [(16, 16)], 3)
    assert {r.scheme for r in image_stats(mixed, StatsOptions(factors=(1,))).rows} == {"lac", "class"}


def test_fidelity_is_exact_at_factor_one():
    stats = image_stats(_random_masks(4, SIZES, 5), StatsOptions(factors=(1,)))
    for fidelity in [stats.subsampling[1], *(r.fidelity for r in stats.rows)]:
        assert fidelity.miou == 1.0 and fidelity.mbf == 1.0
        assert all(v == 1.0 for v in fidelity.iou + fidelity.bf if v is not None)


@pytest.mark.parametrize("method", ["nearest", "mode"])
@pytest.mark.parametrize("factor", [2, 4, 8])
def test_fidelity_is_exact_for_block_masks(factor, method):
    rng = np.random.default_rng(factor)
    masks = []
    for h, w in [(6, 7), (5, 5), (9, 4)]:
        cells = rng.integers(0, 4, size=(h, w)).astype(np.uint8)
        masks.append((f"{h}x{w}", np.kron(cells, np.ones((factor, factor), np.uint8))))
    # Cut through the last row and column of blocks: the partial cells still hold one label each.
    masks.append(("cropped", masks[0][1][: 1 - factor, : -(factor // 2)]))
    stats = image_stats(masks, StatsOptions(factors=(factor,), downsample_method=method, num_classes=4))
    for fidelity in [stats.subsampling[factor], *(r.fidelity for r in stats.rows)]:
        assert fidelity.miou == 1.0 and fidelity.mbf == 1.0


def test_fidelity_decreases_for_thin_structures():
    mask = np.zeros((64, 64), np.uint8)
    mask[:, 3::7] = 1  # one-pixel vertical lines
    mask[5::9, :] = 2  # one-pixel horizontal lines
    stats = image_stats([("lines", mask)], StatsOptions(factors=(1, 2, 4, 8), schemes=("lac",), starts=("1d",)))
    miou = [stats.subsampling[f].miou for f in (1, 2, 4, 8)]
    mbf = [stats.subsampling[f].mbf for f in (1, 2, 4, 8)]
    assert miou[0] == 1.0 and all(a > b for a, b in itertools.pairwise(miou))
    assert mbf[0] == 1.0 and mbf[-1] < mbf[1] < 1.0
    assert [r.fidelity.miou for r in stats.rows] == miou  # lossless encoding adds no loss


def test_fidelity_of_a_square_by_hand():
    mask = np.zeros((8, 8), np.uint8)
    mask[1:4, 1:4] = 1
    # Nearest cells sample pixels (1, 1), (1, 3), (3, 1), (3, 3): all inside the square, so the square
    # comes back as the 4x4 top-left block: IoU 9/16; background keeps 48 of its 55 pixels.
    stats = image_stats([("square", mask)], StatsOptions(factors=(2,), schemes=("binary",), starts=("1d",)))
    fidelity = stats.rows[0].fidelity
    assert fidelity.iou == pytest.approx([48 / 55, 9 / 16])
    assert fidelity.miou == pytest.approx(9 / 16)
    assert fidelity.images == [1, 1]


def test_per_class_average_skips_images_without_the_class():
    a = np.zeros((8, 8), np.uint8)
    a[1:4, 1:4] = 1  # class 1 only: IoU 9/16 at factor 2
    b = np.zeros((8, 8), np.uint8)
    b[0:4, 4:8] = 2  # class 2 only, an aligned block: IoU 1
    stats = image_stats([("a", a), ("b", b)], StatsOptions(factors=(2,)))
    fidelity = stats.subsampling[2]
    assert fidelity.images == [2, 1, 1]
    assert fidelity.iou[1:] == pytest.approx([9 / 16, 1.0])
    assert fidelity.miou == pytest.approx((9 / 16 + 1.0) / 2)


def test_non_divisible_sizes():
    masks = _random_masks(5, [(37, 53), (13, 9), (1, 30)], 3)
    stats = image_stats(masks, StatsOptions(factors=(1, 4, 8)))
    sizes = {r.factor: r.mask_size for r in stats.rows}
    assert sizes == {1: (37, 53), 4: (10, 14), 8: (5, 7)}
    assert stats.mask_sizes == {"37x53": 1, "13x9": 1, "1x30": 1}
    assert all(0.0 <= r.fidelity.miou <= 1.0 for r in stats.rows)
    assert stats.subsampling[1].miou == 1.0 and stats.subsampling[8].miou < 1.0


def test_max_seq_len_cuts_sequences():
    masks = _random_masks(6, [(24, 24)] * 5, 3)
    full = image_stats(masks, StatsOptions(factors=(1,), schemes=("lac",), starts=("1d",)))
    longest = full.rows[0].max
    cut_len = full.rows[0].p50
    cut = image_stats(masks, StatsOptions(factors=(1,), schemes=("lac", "class"), starts=("1d",), max_seq_len=cut_len))
    lac = next(r for r in cut.rows if r.scheme == "lac")
    lengths = [len(Tokenizer(m.shape, 3).encode(m)) for _, m in masks]
    assert lac.truncated == pytest.approx(np.mean(np.array(lengths) > cut_len))
    assert lac.fidelity.miou < 1.0
    assert cut.subsampling[1].miou == 1.0  # subsampling alone still loses nothing
    klass = next(r for r in cut.rows if r.scheme == "class")
    assert klass.fidelity.miou < lac.fidelity.miou  # 3 tokens per run fit fewer runs than 2
    roomy = image_stats(masks, StatsOptions(factors=(1,), schemes=("lac",), starts=("1d",), max_seq_len=longest))
    assert roomy.rows[0].truncated == 0.0 and roomy.rows[0].fidelity.miou == 1.0


def test_ignore_index():
    mask = np.zeros((16, 16), np.uint8)
    mask[2:6, 2:6] = 1
    mask[8:, :] = 255
    stats = image_stats([("ignore", mask)], StatsOptions(factors=(1, 2), ignore_index=255))
    assert stats.num_classes == 2
    assert stats.subsampling[1].miou == 1.0
    # Ignored pixels are background to the tokenizer.
    lac = next(r for r in stats.rows if (r.scheme, r.starts, r.factor) == ("lac", "1d", 1))
    assert lac.max == 4 * 2 + 1


def test_label_above_num_classes_names_the_mask():
    masks = [*_random_masks(7, [(8, 8)], 3), ("bad.png", np.full((8, 8), 5, np.uint8))]
    with pytest.raises(MaskError, match=r"bad\.png.*label 5.*num-classes 3"):
        image_stats(masks, StatsOptions(num_classes=3))


@pytest.mark.parametrize(
    "options",
    [dict(factors=(0,)), dict(schemes=("lac", "nope")), dict(starts=()), dict(num_classes=1),
     dict(tolerance=-1), dict(max_seq_len=0), dict(downsample_method="max"), dict(order="K")],
)
def test_invalid_options(options):
    with pytest.raises(ValueError):
        StatsOptions(**options)


# ----------------------------------------------------------------------------- reading masks
def test_read_label_map_formats(tmp_path):
    labels = (np.arange(12 * 10).reshape(12, 10) % 7).astype(np.uint8)
    Image.fromarray(labels).save(tmp_path / "gray.png")
    palette = Image.fromarray(labels, mode="P")
    palette.putpalette([(255 - i) % 256 for i in range(768)])  # colours unrelated to the indices
    palette.save(tmp_path / "palette.png")
    Image.fromarray(labels.astype(np.uint16) * 1000).save(tmp_path / "wide.png")
    tifffile.imwrite(tmp_path / "labels.tif", labels.astype(np.uint16))
    tifffile.imwrite(tmp_path / "float.tiff", labels.astype(np.float32)[None])
    Image.fromarray(np.repeat(labels[..., None], 3, axis=-1)).save(tmp_path / "grey_rgb.png")
    for name, expected in [("gray.png", labels), ("palette.png", labels), ("wide.png", labels.astype(np.int64) * 1000),
                           ("labels.tif", labels), ("float.tiff", labels), ("grey_rgb.png", labels)]:
        np.testing.assert_array_equal(read_label_map(tmp_path / name), expected.astype(np.int64))
    assert [p.name for p in find_masks(tmp_path)] == ["float.tiff", "gray.png", "grey_rgb.png", "labels.tif",
                                                      "palette.png", "wide.png"]


def test_read_label_map_refuses_bad_files(tmp_path):
    colour = np.zeros((4, 4, 3), np.uint8)
    colour[1, 2] = (255, 0, 0)
    Image.fromarray(colour).save(tmp_path / "rgb.png")
    (tmp_path / "text.png").write_text("not an image")
    tifffile.imwrite(tmp_path / "half.tif", np.full((4, 4), 0.5, np.float32))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((3, 4, 4), np.uint8), photometric="minisblack")
    tifffile.imwrite(tmp_path / "negative.tif", np.full((4, 4), -1, np.int16))
    (tmp_path / "mask.jpg").write_bytes(b"")
    for name, message in [("rgb.png", "colour image"), ("text.png", "cannot read"), ("half.tif", "non-integer"),
                          ("stack.tif", "stack of 3 frames"), ("negative.tif", "negative"), ("mask.jpg", "unsupported"),
                          ("missing.png", "no such file")]:
        with pytest.raises(MaskError, match=message) as error:
            read_label_map(tmp_path / name)
        assert name in str(error.value)


def test_folder_stats_reads_a_folder(tmp_path):
    masks = _random_masks(8, [(20, 30)] * 3, 3)
    for name, mask in masks:
        Image.fromarray(mask).save(tmp_path / f"{name}.png")
    (tmp_path / "notes.txt").write_text("ignored")
    on_disk = folder_stats(tmp_path, StatsOptions(factors=(1, 2)))
    in_memory = image_stats(masks, StatsOptions(factors=(1, 2)))
    assert on_disk.to_dict() == in_memory.to_dict()
    with pytest.raises(MaskError, match=r"no \.png"):
        folder_stats(tmp_path, pattern="*.tif")
    with pytest.raises(MaskError, match="no such directory"):
        folder_stats(tmp_path / "missing")


def test_find_masks_pattern_and_recursive(tmp_path):
    (tmp_path / "city").mkdir()
    for name in ("a_labelIds.png", "a_color.png", "city/b_labelIds.png", "city/c_labelIds.tif"):
        Image.fromarray(np.zeros((2, 2), np.uint8)).save(tmp_path / name)
    assert [p.name for p in find_masks(tmp_path)] == ["a_color.png", "a_labelIds.png"]
    assert [p.name for p in find_masks(tmp_path, "*_labelIds.*")] == ["a_labelIds.png"]
    found = find_masks(tmp_path, "*_labelIds.*", recursive=True)
    assert [p.relative_to(tmp_path).as_posix() for p in found] == [
        "a_labelIds.png", "city/b_labelIds.png", "city/c_labelIds.tif"
    ]
