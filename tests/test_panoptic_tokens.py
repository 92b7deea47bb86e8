"""Contracts of the panoptic tokenizer: instance-grouped round trips, group order and spans, input
validation, strict/ignore decoding, grammar-constrained sampling, and the COCO panoptic format."""

import itertools
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_grammar_allows, hela_masks, sample_under_grammar
from rleseg.tokens import EOS, downsample_mask, upsample_mask
from rleseg.tokens.formats import coco_panoptic_ids, coco_panoptic_rgb, coco_to_panoptic, panoptic_to_coco
from rleseg.tokens.panoptic import PanopticTokenizer

STARTS = ["1d", "2d"]
ORDERS = ["C", "F"]
COMBOS = list(itertools.product(STARTS, ORDERS))


def random_panoptic(rng, shape, num_classes, thing_classes, kind="mixed"):
    """Stuff blobs, then thing rectangles painted over them: some touch an instance of the same class,
    some instances are split into several rectangles; ids are large and non-contiguous."""
    height, width = shape
    stuff = [c for c in range(1, num_classes) if c not in thing_classes]
    semantic = np.zeros(shape, np.int64)
    if stuff and kind != "things":
        palette = np.array([0, *stuff])
        small = rng.integers(0, palette.size, (-(-height // 3), -(-width // 3)))
        semantic = palette[upsample_mask(small, 3, shape)]
    instances = rng.integers(0, 1000, shape) * (rng.random(shape) < 0.5)  # ids on stuff are ignored
    if thing_classes and kind != "stuff":
        for _ in range(rng.integers(0, 7)):
            label = rng.choice(thing_classes)
            ident = int(rng.integers(1, 10**6))
            for _ in range(rng.integers(1, 3)):  # a second piece splits the instance
                r, c = rng.integers(0, height), rng.integers(0, width)
                h, w = rng.integers(1, height + 1), rng.integers(1, width + 1)
                semantic[r : r + h, c : c + w] = label
                instances[r : r + h, c : c + w] = ident
                if rng.random() < 0.5 and c + w < width:  # a touching instance of the same class
                    semantic[r : r + h, c + w : c + 2 * w] = label
                    instances[r : r + h, c + w : c + 2 * w] = ident + 1
    thing = np.isin(semantic, thing_classes)
    return semantic, np.where(thing, instances, instances * (rng.random(shape) < 0.3))


@st.composite
def panoptic_maps(draw, max_side=12):
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    num_classes = draw(st.integers(2, 6))
    kind = draw(st.sampled_from(["mixed", "mixed", "stuff", "things", "empty"]))
    foreground = list(range(1, num_classes))
    if kind == "stuff":
        things = []
    elif kind == "things":
        things = foreground
    else:
        things = sorted(draw(st.sets(st.sampled_from(foreground))))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "empty":
        return np.zeros(shape, np.uint8), np.zeros(shape, np.int32), num_classes, things
    semantic, instances = random_panoptic(rng, shape, num_classes, things, kind)
    return semantic, instances, num_classes, things


def assert_same_panoptic(tok, semantic, instances, decoded_semantic, decoded_instances):
    """Same classes; instances equal up to renaming, numbered 1.. in scan order of their first pixel."""
    assert np.array_equal(decoded_semantic, semantic)
    assert decoded_instances.dtype == np.int32
    thing = tok.is_thing[semantic]
    assert np.all(decoded_instances[~thing] == 0)
    pairs = np.unique(np.stack([instances[thing], decoded_instances[thing]]), axis=1)
    assert np.unique(pairs[0]).size == pairs.shape[1] == np.unique(pairs[1]).size  # a bijection
    ids = decoded_instances.ravel(order=tok.order)
    _, first = np.unique(ids, return_index=True)
    count = int(ids.max())
    assert sorted(np.unique(ids[ids > 0]).tolist()) == list(range(1, count + 1))
    assert np.all(np.diff(first[1:] if 0 in ids else first) > 0)  # id order = order of first pixels


# ------------------------------------------------------------------------------------------ round trips
@settings(max_examples=40, deadline=None)
@given(sample=panoptic_maps(), max_run=st.one_of(st.none(), st.integers(1, 15)))
@pytest.mark.parametrize(("starts", "order"), COMBOS)
def test_round_trip_random_instance_maps(starts, order, sample, max_run):
    semantic, instances, num_classes, things = sample
    tok = PanopticTokenizer(semantic.shape, num_classes, things, starts, order, max_run)
    tokens = tok.encode(semantic, instances)
    assert tokens.dtype == np.int64 and tokens[-1] == EOS and (tokens == EOS).sum() == 1
    assert tokens.max() < tok.vocab.size and tokens[:-1].min(initial=tok.vocab.size) > tok.bos
    decoded = tok.decode(tokens)
    assert_same_panoptic(tok, semantic, instances, *decoded)
    assert_same_panoptic(tok, semantic, instances, *tok.decode(tokens, errors="ignore"))
    groups = tok.decode_groups(tokens)
    # spans tile the body: runs then one class token per group
    assert [g.start for g in groups] == [0, *(g.stop for g in groups)][: len(groups)]
    assert (groups[-1].stop if groups else 0) == tokens.size - 1
    for g in groups:
        assert tok.vocab["class"].value(tokens[g.class_position]) == g.label
        assert g.stop - g.start == len(g.runs) * tok.tokens_per_run + 1
    labels = [g.label for g in groups]
    kinds = [bool(tok.is_thing[c]) for c in labels]
    assert kinds == sorted(kinds, reverse=True)  # things first
    stuff_labels = [c for c, thing in zip(labels, kinds, strict=True) if not thing]
    assert stuff_labels == sorted(set(stuff_labels))  # each stuff class once, in class order
    assert [g.instance for g in groups if tok.is_thing[g.label]] == list(range(1, 1 + sum(kinds)))
    present_stuff = sorted(set(np.unique(semantic).tolist()) & set(tok.stuff_classes))
    assert stuff_labels == present_stuff


def test_touching_instances_of_one_class_stay_apart_and_split_instances_stay_one():
    semantic = np.zeros((4, 6), np.uint8)
    semantic[:2, :] = 1
    semantic[3, :2] = semantic[3, 4:] = 1
    instances = np.zeros((4, 6), np.int32)
    instances[:2, :3], instances[:2, 3:] = 4, 9  # touching, same class
    instances[3, :2] = instances[3, 4:] = 2  # one instance in two pieces
    tok = PanopticTokenizer((4, 6), 2, [1], max_run=6)
    groups = tok.decode_groups(tok.encode(semantic, instances))
    assert [(g.label, g.instance) for g in groups] == [(1, 1), (1, 2), (1, 3)]
    assert [g.runs.starts.tolist() for g in groups] == [[0, 6], [3, 9], [18, 22]]
    _, decoded = tok.decode(tok.encode(semantic, instances))
    assert np.array_equal(decoded, np.select([instances == 4, instances == 9, instances == 2], [1, 2, 3], 0))


def test_exact_layout_of_a_small_example():
    tok = PanopticTokenizer((2, 4), 3, [1])
    semantic = np.array([[1, 1, 0, 2], [1, 0, 1, 2]])
    instances = np.array([[5, 5, 0, 0], [5, 0, 7, 0]])
    start, length, label = tok.vocab["start"].token, tok.vocab["length"].token, tok.vocab["class"].token
    expected = [start(0), length(2), start(4), length(1), label(1), start(6), length(1), label(1),
                start(3), length(1), start(7), length(1), label(2), EOS]
    assert tok.encode(semantic, instances).tolist() == expected
    assert tok.bos == tok.vocab.bos["panoptic"] and tok.task == "panoptic"
    # the vocabulary is the image "class" scheme's
    assert tok.vocab.to_dict() == tok.image.vocab.to_dict() and tok.image.scheme == "class"


def test_two_d_starts_and_column_major_order():
    semantic = np.array([[0, 1], [1, 1], [0, 2]])
    instances = np.array([[0, 3], [3, 8], [0, 0]])
    tok = PanopticTokenizer((3, 2), 3, [1], "2d", "F")
    groups = tok.decode_groups(tok.encode(semantic, instances))
    # column-major: column 0 = pixels 0..2, column 1 = pixels 3..5; instance 3 first appears at (1, 0)
    assert [(g.label, g.runs.starts.tolist()) for g in groups] == [(1, [1, 3]), (1, [4]), (2, [5])]
    tokens = tok.encode(semantic, instances)
    assert tok.vocab["coord"].value(tokens[:2]).tolist() == [0, 1]  # (col 0, row 1)
    assert_same_panoptic(tok, semantic, instances, *tok.decode(tokens))


def test_instance_ids_on_stuff_and_background_are_ignored():
    rng = np.random.default_rng(0)
    semantic, instances = random_panoptic(rng, (9, 11), 5, [1, 3])
    thing = np.isin(semantic, [1, 3])
    tok = PanopticTokenizer((9, 11), 5, [1, 3])
    clean = tok.encode(semantic, np.where(thing, instances, 0))
    noisy = tok.encode(semantic, np.where(thing, instances, rng.integers(0, 50, semantic.shape)))
    assert np.array_equal(clean, noisy)


def test_input_validation():
    tok = PanopticTokenizer((3, 3), 4, [1, 2])
    semantic = np.array([[1, 1, 0], [2, 2, 3], [0, 0, 3]])
    with pytest.raises(ValueError, match=r"instance id 0 \(first at row 1, col 0, class 2\)"):
        tok.encode(semantic, np.array([[1, 1, 0], [0, 0, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="instance id 1 covers pixels of classes 1 and 2"):
        tok.encode(semantic, np.array([[1, 1, 0], [1, 1, 0], [0, 0, 0]]))
    with pytest.raises(ValueError, match="mask_size"):
        tok.encode(semantic, np.zeros((3, 4), np.int32))
    with pytest.raises(ValueError, match="label 4"):
        tok.encode(np.full((3, 3), 4), np.ones((3, 3), np.int32))
    with pytest.raises(ValueError, match="negative"):
        tok.encode(semantic, -np.ones((3, 3), np.int32))
    with pytest.raises(ValueError, match=r"thing_classes must lie in 1 \.\. 3"):
        PanopticTokenizer((3, 3), 4, [0, 1])
    with pytest.raises(ValueError, match="twice"):
        PanopticTokenizer((3, 3), 4, [1, 1])
    with pytest.raises(ValueError, match="errors"):
        tok.decode([EOS], errors="replace")


def test_to_dict_round_trips_through_json():
    tok = PanopticTokenizer((5, 4), 4, [3, 1], "2d", "F", max_run=3)
    data = json.loads(json.dumps(tok.to_dict()))
    assert data["type"] == "panoptic" and data["thing_classes"] == [1, 3]
    again = PanopticTokenizer.from_dict(data)
    semantic, instances = random_panoptic(np.random.default_rng(1), (5, 4), 4, [1, 3])
    assert np.array_equal(again.encode(semantic, instances), tok.encode(semantic, instances))
    with pytest.raises(ValueError, match="not a panoptic tokenizer"):
        PanopticTokenizer.from_dict(tok.image.to_dict())
    data["vocab"]["size"] += 1
    with pytest.raises(ValueError, match="vocabulary"):
        PanopticTokenizer.from_dict(data)


# ------------------------------------------------------------------------------------------ decoding errors
def _valid(starts="1d"):
    tok = PanopticTokenizer((4, 5), 4, [1, 2], starts)
    semantic = np.array([[1, 1, 0, 3, 3], [0, 2, 2, 0, 3], [1, 0, 0, 0, 0], [0, 0, 3, 3, 0]])
    instances = np.array([[4, 4, 0, 0, 0], [0, 6, 6, 0, 0], [5, 0, 0, 0, 0], [0, 0, 0, 0, 0]])
    return tok, tok.encode(semantic, instances)


@pytest.mark.parametrize("starts", STARTS)
def test_strict_raises_on_each_malformation(starts):
    tok, tokens = _valid(starts)
    k, body = tok.tokens_per_run, tokens[:-1]
    groups = tok.decode_groups(tokens)
    g0, g1 = (tokens[g.start : g.stop] for g in groups[:2])  # instance 4: pixels 0-1; instance 6: pixels 6-7
    first_run = body[:k]
    start = tok.vocab["start" if starts == "1d" else "coord"].token
    length, label = tok.vocab["length"].token, tok.vocab["class"].token
    at_pixel_2 = [start(2)] if starts == "1d" else [start(0), start(2)]  # a free background pixel
    second_stuff = np.concatenate([at_pixel_2, [length(1), label(3)]])
    cases = {
        "no EOS": body,
        "follows EOS": np.append(tokens, body[0]),
        "closes a group without runs": np.concatenate([[body[groups[0].class_position]], body, [EOS]]),
        "closes a partial run": np.concatenate([first_run[:-1], [g0[-1], EOS]]),
        "not closed by a class token": np.concatenate([body, first_run, [EOS]]),
        "expected a length token": np.concatenate([first_run[:1], first_run, g0[-1:], [EOS]]),
        "BOS": np.concatenate([[tok.bos], body, [EOS]]),
        "sorted and disjoint": np.concatenate([g1[:k], first_run, g1[-1:], [EOS]]),
        "groups must not share pixels": np.concatenate([g0, g0, [EOS]]),
        "stuff class 3 closes a second group": np.concatenate([body, second_stuff, [EOS]]),
    }
    outside = first_run.copy()
    if starts == "1d":
        outside[0], outside[-1] = tok.vocab["start"].token(19), tok.vocab["length"].token(2)
        cases["ends past the mask"] = np.concatenate([outside, g0[-1:], [EOS]])
    else:
        outside[0] = tok.vocab["coord"].token(4)  # row 4 of a 4-row grid (coordinates share max(H, W) = 5)
        cases["outside the 4x5 scan grid"] = np.concatenate([outside, g0[-1:], [EOS]])
    for words, sequence in cases.items():
        with pytest.raises(ValueError, match=words):
            tok.decode(sequence)
        semantic, instances = tok.decode(sequence, errors="ignore")
        assert semantic.shape == instances.shape == (4, 5)


def test_ignore_mode_rules():
    tok, tokens = _valid()
    body = tokens[:-1]
    groups = tok.decode_groups(tokens)
    reference = tok.decode(tokens)
    k = tok.tokens_per_run
    # runs left open at the end are dropped; so is a missing EOS
    for sequence in (np.concatenate([body, body[:k], [EOS]]), body):
        assert all(np.array_equal(a, b) for a, b in zip(tok.decode(sequence, "ignore"), reference, strict=True))
    # a class token that closes no run is dropped; a stray token is skipped
    noisy = np.concatenate([[body[groups[0].class_position]], body[:1], body, [EOS]])
    assert all(np.array_equal(a, b) for a, b in zip(tok.decode(noisy, "ignore"), reference, strict=True))
    # a later group wins where groups overlap, in both maps
    g0 = tokens[groups[0].start : groups[0].stop]
    stuff = tokens[groups[-1].start : groups[-1].stop].copy()
    stuff[: k] = g0[: k]  # the stuff group now claims instance 1's first run
    semantic, instances = tok.decode(np.concatenate([body, stuff, [EOS]]), "ignore")
    assert semantic[0, 0] == 3 and instances[0, 0] == 0 and instances[0, 1] == 0


def test_ignore_never_raises_and_stays_consistent():
    rng = np.random.default_rng(2)
    for starts, order in COMBOS:
        tok = PanopticTokenizer((4, 5), 4, [1, 2], starts, order)
        semantic, instances = random_panoptic(rng, (4, 5), 4, [1, 2])
        tokens = tok.encode(semantic, instances)
        for trial in range(200):
            if trial % 2:
                sequence = rng.integers(-3, tok.vocab.size + 3, rng.integers(0, 40))
            else:
                sequence = tokens.copy()
                where = rng.integers(0, sequence.size, 3)
                sequence[where] = rng.integers(0, tok.vocab.size, 3)
                sequence = np.insert(sequence, rng.integers(0, sequence.size), rng.integers(0, tok.vocab.size))
            semantic_out, instances_out = tok.decode(sequence, errors="ignore")
            assert semantic_out.max() < 4
            assert np.array_equal(instances_out > 0, tok.is_thing[semantic_out])
            groups = tok.decode_groups(sequence, errors="ignore")
            assert all(len(g.runs) > 0 and g.start < g.stop for g in groups)


# ------------------------------------------------------------------------------------------ grammar


@pytest.mark.parametrize(("starts", "order"), COMBOS)
def test_grammar_samples_always_decode_strictly(starts, order):
    rng = np.random.default_rng(3)
    for shape, things, max_run, max_len in [
        ((3, 4), [1], None, 30), ((2, 2), [1, 2], 2, 12), ((1, 5), [], 3, 9), ((3, 3), [1, 2, 3], 9, 6),
        ((2, 3), [2], 1, 40),
    ]:
        tok = PanopticTokenizer(shape, 4, things, starts, order, max_run)
        for _ in range(6):
            for row in sample_under_grammar(tok, rng, 5, max_len):
                assert (row == EOS).sum() == 1
                semantic, instances = tok.decode(row, errors="strict")
                assert np.array_equal(instances > 0, tok.is_thing[semantic])


def test_grammar_allows_every_ground_truth_sequence():
    rng = np.random.default_rng(4)
    for starts, order in COMBOS:
        tok = PanopticTokenizer((6, 7), 5, [1, 3], starts, order, max_run=4)
        assert_grammar_allows(tok, [tok.encode(*random_panoptic(rng, (6, 7), 5, [1, 3])) for _ in range(5)])


def test_grammar_rules_on_a_tiny_mask():
    tok = PanopticTokenizer((1, 4), 3, [1])  # class 2 is stuff
    start, length, label = tok.vocab["start"], tok.vocab["length"], tok.vocab["class"]
    grammar = tok.grammar(1)
    assert np.flatnonzero(grammar.allowed(3)[0]).tolist() == [EOS]  # a run + class + EOS needs 4
    assert not grammar.allowed(4)[0, label.first : label.stop].any()  # no class before a run
    for token in (start.token(1), length.token(2)):
        grammar.advance(np.array([token]))
    allowed = grammar.allowed(10)[0]
    assert not allowed[EOS] and allowed[label.token(1)] and allowed[label.token(2)]
    assert start.value(np.flatnonzero(allowed[start.first : start.stop]) + start.first).tolist() == [3]
    grammar.advance(np.array([label.token(2)]))  # stuff class 2 is now used
    allowed = grammar.allowed(10)[0]
    assert allowed[EOS]
    assert start.value(np.flatnonzero(allowed[start.first : start.stop]) + start.first).tolist() == [0, 3]
    grammar.advance(np.array([start.token(0)]))
    assert length.value(np.flatnonzero(grammar.allowed(10)[0])).tolist() == [1]  # pixel 1 is claimed
    grammar.advance(np.array([length.token(1)]))
    allowed = grammar.allowed(10)[0]
    assert allowed[label.token(1)] and not allowed[label.token(2)]


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.parametrize(("starts", "order"), COMBOS)
def test_fluo_hela_instances_round_trip(starts, order):
    frames = downsample_mask(hela_masks()[::6], 5)  # 4 frames of (140, 220) instance ids
    for instances in frames:
        # cells as things; for a stuff class as well, the cells of odd id become class 2 (ids ignored)
        for num_classes, semantic in [(2, (instances > 0).astype(np.uint8)),
                                      (3, np.where(instances > 0, 1 + instances % 2, 0).astype(np.uint8))]:
            tok = PanopticTokenizer(instances.shape, num_classes, [1], starts, order)
            tokens = tok.encode(semantic, instances)
            assert_same_panoptic(tok, semantic, np.where(semantic == 1, instances, 0), *tok.decode(tokens))
            count = np.unique(instances[semantic == 1]).size
            assert sum(g.label == 1 for g in tok.decode_groups(tokens)) == count


# ------------------------------------------------------------------------------------------ COCO panoptic
def test_coco_panoptic_colour_is_the_documented_id():
    ids = np.array([[0, 1 + 256 * 2 + 256**2 * 3], [256**3 - 1, 70000]])
    rgb = coco_panoptic_rgb(ids)
    assert rgb.dtype == np.uint8 and rgb[0, 1].tolist() == [1, 2, 3] and rgb[1, 0].tolist() == [255] * 3
    assert np.array_equal(coco_panoptic_ids(rgb), ids)
    with pytest.raises(ValueError, match=r"\(H, W, 3\)"):
        coco_panoptic_ids(np.zeros((2, 2), np.uint8))
    with pytest.raises(ValueError, match="segment ids"):
        coco_panoptic_rgb(np.array([256**3]))


@pytest.mark.parametrize("categories", [None, {1: 17, 2: 3, 3: 92, 4: 200}])
def test_coco_panoptic_round_trip(categories):
    rng = np.random.default_rng(9)
    table = categories or {c: c for c in range(1, 5)}
    for trial in range(30):
        things = [c for c in range(1, 5) if rng.random() < 0.5]
        semantic, instances = random_panoptic(rng, tuple(rng.integers(1, 15, 2)), 5, things)
        rgb, info = panoptic_to_coco(semantic, instances, categories, thing_classes=things)
        assert rgb.dtype == np.uint8 and rgb.shape == (*semantic.shape, 3)
        assert [s["id"] for s in info] == list(range(1, len(info) + 1))
        assert {s["category_id"] for s in info} <= set(table.values())
        back_semantic, back_instances = coco_to_panoptic(rgb, info, [table[c] for c in things], categories)
        thing = np.isin(semantic, things)
        reference = np.where(thing, instances, 0)
        # instance ids come back as 1.. in increasing order of the original ids
        _, renumbered = np.unique(reference, return_inverse=True)
        renumbered = renumbered.reshape(reference.shape) + (0 if (reference == 0).any() else 1)
        assert np.array_equal(back_semantic, semantic)
        assert np.array_equal(back_instances, renumbered)
        ids = coco_panoptic_ids(rgb)
        assert sum(s["area"] for s in info) == np.count_nonzero(semantic)
        if trial == 0:
            tok = PanopticTokenizer(semantic.shape, 5, things)
            decoded = tok.decode(tok.encode(back_semantic, back_instances))
            def segments(entries):  # ids differ: the tokenizer numbers instances by first pixel
                return sorted((e["category_id"], e["area"], e["bbox"]) for e in entries)

            assert segments(panoptic_to_coco(*decoded, categories, things)[1]) == segments(info)
        for s in info:
            mask = ids == s["id"]
            assert np.unique(semantic[mask]).size == 1 and table[int(semantic[mask][0])] == s["category_id"]


def test_coco_panoptic_area_and_bbox_match_pycocotools():
    mask_api = pytest.importorskip("pycocotools.mask")
    semantic, instances = random_panoptic(np.random.default_rng(10), (17, 23), 4, [1, 2])
    rgb, info = panoptic_to_coco(semantic, instances, thing_classes=[1, 2])
    ids = coco_panoptic_ids(rgb)
    assert len(info) > 2
    for s in info:
        rle = mask_api.encode(np.asfortranarray((ids == s["id"]).astype(np.uint8)))
        assert s["area"] == int(mask_api.area(rle))
        assert s["bbox"] == mask_api.toBbox(rle).astype(int).tolist()


def test_coco_panoptic_reading_rules_and_errors():
    semantic = np.array([[1, 1, 2], [3, 3, 0]])
    instances = np.array([[4, 4, 0], [0, 0, 0]])
    rgb, info = panoptic_to_coco(semantic, instances)
    assert [(s["category_id"], s["area"]) for s in info] == [(1, 2), (2, 1), (3, 2)]
    crowded = [dict(s, iscrowd=1) if s["category_id"] == 1 else s for s in info]
    assert coco_to_panoptic(rgb, crowded, [1])[0].tolist() == [[0, 0, 2], [3, 3, 0]]
    kept_semantic, kept_instances = coco_to_panoptic(rgb, crowded, [1], crowd="instance")
    assert kept_semantic.tolist() == semantic.tolist() and kept_instances[0, 0] == 1
    with pytest.raises(ValueError, match="segment id 3 appears in the image but not in segments_info"):
        coco_to_panoptic(rgb, info[:2], [1])
    with pytest.raises(ValueError, match=r"COCO category ids \[3\] have no class"):
        coco_to_panoptic(rgb, info, [1], categories={1: 1, 2: 2})
    with pytest.raises(ValueError, match="distinct"):
        coco_to_panoptic(rgb, [*info, info[0]], [1])
    with pytest.raises(ValueError, match="crowd"):
        coco_to_panoptic(rgb, info, [1], crowd="drop")
    with pytest.raises(ValueError, match="instance id 4 covers pixels of classes 1 and 3"):
        panoptic_to_coco(semantic, np.array([[4, 4, 0], [4, 0, 0]]))
    with pytest.raises(ValueError, match="thing pixel needs an instance id"):
        panoptic_to_coco(semantic, instances, thing_classes=[1, 3])
    with pytest.raises(ValueError, match=r"classes \[3\] have no COCO category id"):
        panoptic_to_coco(semantic, instances, categories={1: 10, 2: 20})
