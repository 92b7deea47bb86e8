"""COCO RLE and Kaggle string interop, checked against pycocotools and a naive reference."""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from rleseg.tokens import formats as fmt
from rleseg.tokens import mask_to_runs
from rleseg.tokens.formats import coco as coco_rle

coco = pytest.importorskip("pycocotools.mask")

SETTINGS = settings(max_examples=200, deadline=None)


def shapes(max_side: int = 24):
    return st.tuples(st.integers(1, max_side), st.integers(1, max_side))


def binary_masks(max_side: int = 24):
    return shapes(max_side).flatmap(lambda s: arrays(np.uint8, s, elements=st.integers(0, 1)))


def label_maps(max_label: int = 6, max_side: int = 24):
    return shapes(max_side).flatmap(lambda s: arrays(np.int64, s, elements=st.integers(0, max_label)))


def edge_masks() -> list[np.ndarray]:
    """Empty, full, single pixels (first, last, middle), 1xN, Nx1, a 1x1 of each value."""
    masks = [np.zeros((5, 7), np.uint8), np.ones((5, 7), np.uint8)]
    for index in [(0, 0), (4, 6), (2, 3), (4, 0), (0, 6)]:
        single = np.zeros((5, 7), np.uint8)
        single[index] = 1
        masks.append(single)
    row, column = np.zeros((1, 9), np.uint8), np.zeros((9, 1), np.uint8)
    row[0, 2:5] = 1
    column[6:, 0] = 1
    masks += [row, column, np.ones((1, 9), np.uint8), np.zeros((9, 1), np.uint8)]
    masks += [np.zeros((1, 1), np.uint8), np.ones((1, 1), np.uint8)]
    masks.append(np.indices((6, 5)).sum(axis=0).astype(np.uint8) % 2)  # checkerboard
    return masks


EDGE = edge_masks()


def reference_counts(mask: np.ndarray) -> list[int]:
    """COCO counts: alternate 0/1 runs from a leading (maybe empty) run of 0."""
    counts, current, run = [], 0, 0
    for pixel in mask.ravel(order="F").tolist():
        if pixel != current:
            counts.append(run)
            current, run = pixel, 0
        run += 1
    counts.append(run)
    return counts


def compress(counts: list[int]) -> list[bytes]:
    """Our string codec on one mask's counts."""
    return coco_rle._compress_counts(np.array(counts, dtype=np.int64), np.array([0, len(counts)]))


def decompress(text: bytes) -> list[int]:
    counts, bounds = coco_rle._decompress_counts([text], ["test"])
    assert bounds.tolist() == [0, len(counts)]
    return counts.tolist()


def pycoco_encode(mask: np.ndarray) -> dict:
    return coco.encode(np.asfortranarray(mask.astype(np.uint8)))


def check_binary_against_pycocotools(mask: np.ndarray) -> None:
    height, width = mask.shape
    theirs = pycoco_encode(mask)
    # Our run finder (Fortran order, no splitting) gives the same runs as pycocotools' RLE.
    runs = mask_to_runs(mask, order="F", max_run=mask.size)
    ends = runs.starts + runs.lengths
    counts = np.stack([runs.starts - np.append(0, ends[:-1]), runs.lengths], axis=1).ravel().tolist()
    tail = mask.size - (int(ends[-1]) if len(runs) else 0)
    counts = [*counts, tail] if tail or not counts else counts
    assert counts == reference_counts(mask)
    assert coco.frPyObjects({"size": [height, width], "counts": counts}, height, width) == theirs
    # Export: byte-for-byte the same dict, and pycocotools decodes it and the list form to the mask.
    ours = fmt.binary_mask_to_coco_rle(mask)
    assert ours == theirs
    assert isinstance(ours["counts"], bytes)
    assert np.array_equal(coco.decode(ours), mask)
    listed = fmt.binary_mask_to_coco_rle(mask, compressed=False)
    assert listed == {"size": [height, width], "counts": reference_counts(mask)}
    assert np.array_equal(coco.decode(coco.frPyObjects(listed, height, width)), mask)
    # Import: pycocotools' bytes, the same as str (from JSON), and the list form.
    for rle in (theirs, {"size": theirs["size"], "counts": theirs["counts"].decode("ascii")}, listed):
        decoded = fmt.coco_rle_to_binary_mask(rle)
        assert decoded.dtype == np.uint8 and decoded.shape == mask.shape
        assert np.array_equal(decoded, mask)


@pytest.mark.parametrize("mask", EDGE, ids=[f"edge{i}" for i in range(len(EDGE))])
def test_edge_masks_match_pycocotools(mask):
    check_binary_against_pycocotools(mask)


@SETTINGS
@given(binary_masks())
def test_random_masks_match_pycocotools(mask):
    check_binary_against_pycocotools(mask)


@SETTINGS
@given(shapes(40), st.floats(0.02, 0.98), st.integers(0, 2**32 - 1))
def test_blobby_masks_match_pycocotools(shape, fill, seed):
    # Long runs exercise multi-character counts and negative differences in the string codec.
    rng = np.random.default_rng(seed)
    rows = np.cumsum(rng.random(shape[0]) < 0.3)
    cols = np.cumsum(rng.random(shape[1]) < 0.3)
    mask = ((np.sin(rows[:, None] * 1.3 + cols[None, :] * 0.7 + seed) + 1) / 2 < fill).astype(np.uint8)
    check_binary_against_pycocotools(mask)


@settings(max_examples=150, deadline=None)
@given(st.lists(st.integers(0, 2**23 - 1), min_size=1, max_size=12))
def test_string_codec_matches_pycocotools(counts):
    # Counts of either sign of difference and up to 5 characters, fed through frPyObjects as an H x 1
    # mask so that pycocotools compresses the list itself. (Larger counts overflow pycocotools' own
    # buffer of 6 characters per count and corrupt its heap, so they are checked below instead.)
    total = sum(counts)
    theirs = coco.frPyObjects({"size": [total, 1], "counts": counts}, total, 1)["counts"]
    ours = compress(counts)
    assert ours == [theirs]
    assert decompress(theirs) == counts


@settings(max_examples=100, deadline=None)
@given(st.lists(st.integers(0, 2**32 - 1), min_size=1, max_size=12))
def test_string_codec_round_trips_uint32_counts(counts):
    # Up to 7 characters per count. pycocotools cannot check these: its reader shifts in 32-bit ints
    # and misreads 7-character counts (|difference| >= 2**29), which no mask under 2**29 pixels has.
    [text] = compress(counts)
    assert decompress(text) == counts


def test_string_codec_known_values():
    # 2**32 - 1 = six chunks of 31 (each 'o' = 48 + 31 + 32) and a last chunk of 3; 1 - (2**32 - 1)
    # is the negative difference stored for the fourth count.
    big = 2**32 - 1
    [text] = compress([1, big, 5, 1])
    assert text[:8] == b"1oooooo3" and text[8:9] == b"5"
    assert decompress(text) == [1, big, 5, 1]


def test_large_label_map_matches_pycocotools():
    rng = np.random.default_rng(3)
    coarse = rng.integers(0, 20, (32, 64))
    label_map = np.kron(coarse, np.ones((32, 32), dtype=np.int64))[:1000, :2000]
    label_map[rng.random(label_map.shape) < 0.001] = 7
    rles = fmt.label_map_to_coco_rles(label_map, num_classes=20)
    assert sorted(rles) == sorted(set(np.unique(label_map).tolist()) - {0})
    for label, rle in rles.items():
        assert rle == pycoco_encode(label_map == label)
    decoded = fmt.coco_rles_to_label_map(rles, label_map.shape)
    assert decoded.dtype == np.uint8
    assert np.array_equal(decoded, label_map)


@SETTINGS
@given(label_maps(), st.booleans())
def test_label_map_round_trip(label_map, compressed):
    rles = fmt.label_map_to_coco_rles(label_map, compressed=compressed)
    assert set(rles) == set(np.unique(label_map).tolist()) - {0}
    for label, rle in rles.items():
        expected = pycoco_encode(label_map == label)
        assert rle == (expected if compressed else fmt.binary_mask_to_coco_rle(label_map == label, False))
        assert np.array_equal(coco.decode(expected), label_map == label)
    assert np.array_equal(fmt.coco_rles_to_label_map(rles, label_map.shape), label_map)


@SETTINGS
@given(label_maps(max_side=30))
def test_memory_layout_does_not_change_the_rles(label_map):
    # C-ordered maps take a transpose-free path to column-major runs; F-ordered and strided ones
    # must give the same RLEs.
    expected = {c: pycoco_encode(label_map == c) for c in set(np.unique(label_map).tolist()) - {0}}
    assert fmt.label_map_to_coco_rles(label_map) == expected
    assert fmt.label_map_to_coco_rles(np.asfortranarray(label_map)) == expected
    strided = np.repeat(label_map, 2, axis=1)[:, ::2]
    assert label_map.size == 1 or not (strided.flags.c_contiguous or strided.flags.f_contiguous)
    assert fmt.label_map_to_coco_rles(strided) == expected
    assert fmt.binary_mask_to_coco_rle(strided == strided.max()) == pycoco_encode(label_map == label_map.max())


def test_mixed_count_forms_import_together():
    label_map = np.array([[0, 2, 2, 5], [1, 2, 0, 5], [1, 1, 0, 3]])
    rles = {
        1: fmt.binary_mask_to_coco_rle(label_map == 1, compressed=False),
        2: pycoco_encode(label_map == 2),
        3: fmt.binary_mask_to_coco_rle(label_map == 3, compressed=False),
        5: {"size": [3, 4], "counts": pycoco_encode(label_map == 5)["counts"].decode()},
    }
    assert np.array_equal(fmt.coco_rles_to_label_map(rles, (3, 4)), label_map)
    rles[3] = {"size": [3, 4], "counts": [11, 2]}
    with pytest.raises(ValueError, match="RLE of id 3: counts sum to 13 pixels, its size"):
        fmt.coco_rles_to_label_map(rles, (3, 4))
    rles[3] = {"size": [3, 4], "counts": b"<1"}
    rles[5] = {"size": [3, 4], "counts": b"9]"}
    with pytest.raises(ValueError, match=r"RLE of id 5: compressed counts, character 1 .* middle of a count"):
        fmt.coco_rles_to_label_map(rles, (3, 4))


def test_label_map_from_pycocotools_rles_through_json():
    label_map = np.array([[0, 2, 2, 5], [1, 2, 0, 5], [1, 1, 0, 0]])
    rles = {c: pycoco_encode(label_map == c) for c in (1, 2, 5)}
    text = json.dumps({str(c): {"size": r["size"], "counts": r["counts"].decode()} for c, r in rles.items()})
    loaded = {int(c): r for c, r in json.loads(text).items()}
    assert np.array_equal(fmt.coco_rles_to_label_map(loaded, (3, 4)), label_map)
    assert fmt.label_map_to_coco_rles(np.zeros((3, 4), np.uint8)) == {}
    assert np.array_equal(fmt.coco_rles_to_label_map({}, (3, 4)), np.zeros((3, 4)))


@SETTINGS
@given(shapes(), st.integers(0, 2**32 - 1))
def test_instance_map_round_trip(shape, seed):
    rng = np.random.default_rng(seed)
    ids = np.array([0, 1, 7, 300, 26001, 70000])[: rng.integers(1, 7)]
    instances = rng.choice(ids, size=shape)
    rles = fmt.instance_map_to_coco_rles(instances)
    assert set(rles) == set(np.unique(instances).tolist()) - {0}
    for key, rle in rles.items():
        assert rle == pycoco_encode(instances == key)
    decoded = fmt.coco_rles_to_instance_map(rles, shape)
    assert np.array_equal(decoded, instances)
    assert decoded.dtype == (np.int64 if instances.max() >= 65536 else np.uint16 if instances.max() >= 256
                             else np.uint8)


def test_overlapping_rles_later_one_wins():
    a, b = np.zeros((4, 4), np.uint8), np.zeros((4, 4), np.uint8)
    a[:3, :3], b[2:, 2:] = 1, 1
    painted = fmt.coco_rles_to_instance_map({4: pycoco_encode(a), 9: pycoco_encode(b)}, (4, 4))
    assert painted[2, 2] == 9 and painted[0, 0] == 4 and painted[3, 3] == 9 and painted[3, 0] == 0
    painted = fmt.coco_rles_to_instance_map({9: pycoco_encode(b), 4: pycoco_encode(a)}, (4, 4))
    assert painted[2, 2] == 4 and painted[3, 3] == 9


@pytest.mark.parametrize(
    ("rle", "message"),
    [
        ({"size": [2, 2]}, "keys 'size' and 'counts'"),
        ({"size": [2, 2], "counts": [1, 2]}, "sum to 3 pixels"),
        ({"size": [2, 2], "counts": [5, -1]}, "count 1 is negative"),
        ({"size": [2, 2], "counts": [1.0, 3.0]}, "list of integers"),
        ({"size": [2, -2], "counts": [0]}, "non-negative"),
        ({"size": [2], "counts": [2]}, "shape must be"),
        ({"size": [2, 2], "counts": b"1 3"}, r"RLE: compressed counts, character 1 \(' '\) is outside"),
        ({"size": [2, 2], "counts": b"1P"}, "middle of a count"),
        ({"size": [2, 2], "counts": "1\u00e93"}, "ASCII"),
        ({"size": [2, 2], "counts": b"0" + b"P" * 8 + b"0"}, "character 1 starts a count of 9 characters"),
        ({"size": [2, 2], "counts": b"15"}, "sum to 6 pixels"),
    ],
)
def test_bad_coco_rles_raise(rle, message):
    with pytest.raises(ValueError, match=message):
        fmt.coco_rle_to_binary_mask(rle)


def test_bad_coco_inputs_raise():
    with pytest.raises(ValueError, match="only 0 and 1"):
        fmt.binary_mask_to_coco_rle(np.array([[0, 2]]))
    with pytest.raises(ValueError, match="2 dimensions"):
        fmt.binary_mask_to_coco_rle(np.zeros(4, np.uint8))
    with pytest.raises(ValueError, match="label 3, expected labels < 3"):
        fmt.label_map_to_coco_rles(np.array([[0, 3]]), num_classes=3)
    rle = pycoco_encode(np.ones((2, 3), np.uint8))
    with pytest.raises(ValueError, match=r"id 1 has size \[2, 3\], expected \[3, 2\]"):
        fmt.coco_rles_to_label_map({1: rle}, (3, 2))
    for key in ("1", 0, True):
        with pytest.raises(ValueError, match="keys must be labels >= 1"):
            fmt.coco_rles_to_label_map({key: rle}, (2, 3))


@pytest.mark.parametrize(
    ("order", "index_base", "expected"),
    [("F", 1, "1 2 5 1"), ("F", 0, "0 2 4 1"), ("C", 1, "1 1 3 2"), ("C", 0, "0 1 2 2")],
)
def test_kaggle_known_strings(order, index_base, expected):
    mask = np.array([[1, 0, 1], [1, 0, 0]], np.uint8)  # F: 1 1 0 0 1 0, C: 1 0 1 1 0 0
    assert fmt.mask_to_kaggle_rle(mask, order, index_base) == expected
    assert np.array_equal(fmt.kaggle_rle_to_mask(expected, (2, 3), order, index_base), mask)


@SETTINGS
@given(binary_masks(), st.sampled_from("CF"), st.sampled_from([0, 1]))
def test_kaggle_round_trip(mask, order, index_base):
    text = fmt.mask_to_kaggle_rle(mask, order, index_base)
    values = [int(v) for v in text.split()]
    flat = mask.ravel(order=order)
    for start, length in zip(values[0::2], values[1::2], strict=True):
        run = flat[start - index_base : start - index_base + length]
        assert run.size == length and run.all()
    assert sum(values[1::2]) == int(mask.sum())
    decoded = fmt.kaggle_rle_to_mask(text, mask.shape, order, index_base)
    assert decoded.dtype == np.uint8 and np.array_equal(decoded, mask)


@pytest.mark.parametrize("mask", EDGE, ids=[f"edge{i}" for i in range(len(EDGE))])
def test_kaggle_edge_masks(mask):
    for order, base in itertools.product("CF", (0, 1)):
        text = fmt.mask_to_kaggle_rle(mask, order, base)
        assert (text == "") == (mask.sum() == 0)
        assert np.array_equal(fmt.kaggle_rle_to_mask(text, mask.shape, order, base), mask)


def test_kaggle_overlapping_and_unsorted_runs_paint_their_union():
    mask = fmt.kaggle_rle_to_mask("5 2  1 3\n2 2", (2, 3))
    assert mask.ravel(order="F").tolist() == [1, 1, 1, 0, 1, 1]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("1 2 3", "3 values, an odd number"),
        ("1 2 x 1", "value 'x' at position 2 is not an integer"),
        ("1 2.5", "value '2.5' at position 1 is not an integer"),
        ("1 99999999999999999999", "value 99999999999999999999 at position 1 is out of range"),
        ("0 2", r"run 0 \(start 0, length 2\) does not fit"),
        ("1 1 7 1", r"run 1 \(start 7, length 1\) does not fit in a 2x3 mask of 6 pixels"),
        ("3 0", r"run 0 \(start 3, length 0\)"),
        ("3 -1", r"run 0 \(start 3, length -1\)"),
        ("5 3", r"run 0 \(start 5, length 3\)"),
    ],
)
def test_bad_kaggle_strings_raise(text, message):
    with pytest.raises(ValueError, match=message):
        fmt.kaggle_rle_to_mask(text, (2, 3))


def test_bad_kaggle_arguments_raise():
    with pytest.raises(ValueError, match="index_base must be 0 or 1"):
        fmt.kaggle_rle_to_mask("1 1", (2, 3), index_base=2)
    with pytest.raises(ValueError, match="order must be"):
        fmt.mask_to_kaggle_rle(np.ones((2, 2), np.uint8), order="A")
    with pytest.raises(ValueError, match="must be a str"):
        fmt.kaggle_rle_to_mask(float("nan"), (2, 3))
    with pytest.raises(ValueError, match="only 0 and 1"):
        fmt.mask_to_kaggle_rle(np.full((2, 2), 255, np.uint8))
    # Index base 0: a start of 0 is fine, 6 is past a 6-pixel mask.
    assert fmt.kaggle_rle_to_mask("0 1", (2, 3), index_base=0)[0, 0] == 1
    with pytest.raises(ValueError, match="start 6"):
        fmt.kaggle_rle_to_mask("6 1", (2, 3), index_base=0)


def test_zero_size_masks():
    for shape in [(0, 4), (3, 0)]:
        empty = np.zeros(shape, np.uint8)
        assert fmt.binary_mask_to_coco_rle(empty) == pycoco_encode(empty)
        assert fmt.coco_rle_to_binary_mask(pycoco_encode(empty)).shape == shape
        assert fmt.label_map_to_coco_rles(empty) == {}
        assert fmt.mask_to_kaggle_rle(empty) == ""
        assert fmt.kaggle_rle_to_mask("", shape).shape == shape
