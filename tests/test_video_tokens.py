"""Contracts of the video tokenizer: volume, TAC and LTAC round trips, TAC arithmetic, vocabulary limits,
strict/ignore decoding and grammar-constrained sampling."""

import itertools
import json
import time

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from helpers import assert_grammar_allows, hela_masks, sample_under_grammar
from rleseg.tokens import EOS, Tokenizer, downsample_mask, mask_to_runs, upsample_mask
from rleseg.tokens.video import VideoTokenizer, tac_to_video, video_to_tac, video_vocab_size

TEMPORAL = ["volume", "tac"]
SCHEMES = ["lac", "class", "binary"]
STARTS = ["1d", "2d"]
ORDERS = ["C", "F"]
COMBOS = list(itertools.product(TEMPORAL, SCHEMES, STARTS, ORDERS))


def make_tokenizer(temporal, scheme, starts, order, frames, shape, num_classes, max_run=None):
    if scheme == "binary":
        num_classes = 2
        if temporal == "tac":
            frames = 1  # a binary TAC map exists only for one two-class frame
    return VideoTokenizer(frames, shape, num_classes, temporal, scheme, starts, order, max_run)


def synthetic_video(rng, frames, shape, num_classes):
    """A static blobby background, a rectangle moving across it, and a flickering noisy patch."""
    height, width = shape
    small = rng.integers(0, num_classes, (-(-height // 3), -(-width // 3)))
    static = upsample_mask(small, 3, shape)
    video = np.repeat(static[None], frames, axis=0).astype(np.uint8)
    box_h, box_w = rng.integers(1, height + 1), rng.integers(1, width + 1)
    row, col = rng.integers(0, height), rng.integers(0, width)
    step_r, step_c = rng.integers(-2, 3, 2)
    label = rng.integers(0, num_classes)
    for t in range(frames):  # loops over frames only
        r, c = (row + t * step_r) % height, (col + t * step_c) % width
        video[t, r : r + box_h, c : c + box_w] = label
    flicker = rng.random(shape) < rng.random() * 0.3
    noise = rng.integers(0, num_classes, (frames, *shape))
    video[:, flicker] = noise[:, flicker]
    return video


@st.composite
def videos(draw, max_side=12, max_frames=4, max_classes=4):
    frames = draw(st.integers(1, max_frames))
    shape = (draw(st.integers(1, max_side)), draw(st.integers(1, max_side)))
    num_classes = draw(st.integers(2, max_classes))
    kind = draw(st.sampled_from(["mixed", "mixed", "static", "empty", "full"]))
    rng = np.random.default_rng(draw(st.integers(0, 2**32 - 1)))
    if kind == "empty":
        video = np.zeros((frames, *shape), np.uint8)
    elif kind == "full":
        video = np.full((frames, *shape), num_classes - 1, np.uint8)
    else:
        video = synthetic_video(rng, frames, shape, num_classes)
        if kind == "static":
            video[:] = video[0]
    return video, num_classes


# ------------------------------------------------------------------------------------------ round trips
@settings(max_examples=25, deadline=None)
@given(sample=videos(), max_run=st.one_of(st.none(), st.integers(1, 15)))
@pytest.mark.parametrize(("temporal", "scheme", "starts", "order"), COMBOS)
def test_round_trip_every_combination(temporal, scheme, starts, order, sample, max_run):
    video, num_classes = sample
    if scheme == "binary":
        video = (video > 0).astype(np.uint8)
        if temporal == "tac":
            video = video[:1]
    tok = make_tokenizer(temporal, scheme, starts, order, video.shape[0], video.shape[1:], num_classes, max_run)
    tokens = tok.encode(video)
    assert tokens.dtype == np.int64 and tokens[-1] == EOS and (tokens == EOS).sum() == 1
    assert (tokens.size - 1) % tok.tokens_per_run == 0
    assert tokens[:-1].min(initial=tok.vocab.size) > tok.bos  # no special token inside the body
    assert tokens.max() < tok.vocab.size
    decoded = tok.decode(tokens)
    assert decoded.shape == video.shape and decoded.dtype == np.uint8
    assert np.array_equal(decoded, video)
    assert np.array_equal(tok.decode(tokens, errors="ignore"), video)


def test_volume_is_the_image_tokenizer_on_frames_stacked_frame_major():
    rng = np.random.default_rng(0)
    video = synthetic_video(rng, 3, (5, 7), 3)
    for order in ORDERS:
        tok = VideoTokenizer(3, (5, 7), 3, "volume", "class", "1d", order)
        runs = mask_to_runs(tok.image_map(video), order, tok.max_run)
        # Frame-major flattening: frame, then the frame's own raster order.
        flat = np.concatenate([frame.ravel(order) for frame in video])
        assert np.array_equal(tok.image.decode(tok.encode(video)).ravel(order), flat)
        assert len(runs) == (tok.encode(video).size - 1) // tok.tokens_per_run
    tok = VideoTokenizer(3, (5, 7), 3, "volume", "lac", "2d", "C")
    assert tok.grid == (15, 7) and tok.vocab["coord"].size == 15
    video = np.zeros((3, 5, 7), np.uint8)
    video[2, 4, 6] = 1  # last pixel of the volume: 2-D start (frame * H + row, col) = (14, 6)
    tokens = tok.encode(video)
    assert tok.vocab["coord"].value(tokens[:2]).tolist() == [14, 6]
    video = np.zeros((2, 2, 3), np.uint8)
    video[0, 1, 1:] = video[1, 0, :2] = 2  # one run crossing from frame 0 into frame 1
    tok = VideoTokenizer(2, (2, 3), 3, "volume", "class", "1d", max_run=10)
    assert tok.vocab["length"].value(tok.encode(video)[1]) == 4


def test_tac_id_is_the_documented_base_c_number():
    video = np.array([[[2, 0]], [[0, 1]], [[1, 2]]])  # 3 frames, one row of 2 pixels, C = 3
    assert video_to_tac(video, 3).tolist() == [[2 + 0 * 3 + 1 * 9, 0 + 1 * 3 + 2 * 9]]
    rng = np.random.default_rng(1)
    for frames, num_classes in [(1, 2), (4, 3), (8, 2), (5, 7)]:
        video = rng.integers(0, num_classes, (frames, 6, 5))
        powers = num_classes ** np.arange(frames, dtype=np.int64)
        tac = video_to_tac(video, num_classes)
        assert tac.dtype == np.int64
        assert np.array_equal(tac, np.tensordot(powers, video, axes=1))
        assert np.array_equal(tac_to_video(tac, frames, num_classes), video)


def test_tac_ids_do_not_overflow():
    # 12 frames of 40 classes: ids up to 40**12 - 1 ~ 1.7e19 would overflow int64; 11 frames fit.
    video = np.full((11, 1, 2), 39, np.uint8)
    assert video_to_tac(video, 40)[0, 0] == 40**11 - 1
    assert tac_to_video(video_to_tac(video, 40), 11, 40).max() == 39
    with pytest.raises(ValueError, match="int64"):
        video_to_tac(np.zeros((12, 1, 1), np.uint8), 40)
    with pytest.raises(ValueError, match="TAC ids must lie"):
        tac_to_video(np.array([9]), 2, 3)


def test_identical_frames_cost_one_frame_under_tac():
    rng = np.random.default_rng(2)
    frame = upsample_mask(rng.integers(0, 3, (4, 5)), 3, (12, 14)).astype(np.uint8)
    for scheme in ["lac", "class"]:
        image_tokens = Tokenizer((12, 14), 3, scheme).encode(frame)
        for frames in [1, 2, 4, 6]:
            tok = VideoTokenizer(frames, (12, 14), 3, "tac", scheme)
            tokens = tok.encode(np.repeat(frame[None], frames, axis=0))
            assert tokens.size == image_tokens.size  # same runs, same tokens per run
    # the TAC id of a pixel that holds c in every frame of N is c * (C**N - 1) / (C - 1)
    tok = VideoTokenizer(4, (12, 14), 3, "tac", "class")
    assert set(np.unique(tok.image_map(np.repeat(frame[None], 4, axis=0)))) <= {0, 40, 80}


def test_ltac_values_decode_back_to_class_tuple_and_length():
    frames, num_classes, width = 2, 3, 5
    tok = VideoTokenizer(frames, (1, width), num_classes, "tac", "lac")
    lac = tok.vocab["lac"]
    assert lac.size == width * (num_classes**frames - 1)
    for tac_id in range(1, num_classes**frames):
        classes = tac_to_video(np.array([tac_id]), frames, num_classes)[:, 0]
        for length in range(1, width + 1):
            video = np.zeros((frames, 1, width), np.uint8)
            video[:, 0, :length] = classes[:, None]
            tokens = tok.encode(video)
            assert tokens.size == 3
            value = int(lac.value(tokens[1]))
            assert value == width * (tac_id - 1) + length
            decoded = tok.decode(tokens)
            assert decoded[:, 0, 0].tolist() == classes.tolist()
            assert int((decoded[:, 0] == classes[:, None]).all(axis=0).sum()) == length


# ------------------------------------------------------------------------------------------ vocabulary
def test_infeasible_vocabulary_error_states_size_and_alternatives():
    with pytest.raises(ValueError) as info:
        VideoTokenizer(8, (80, 80), 3, "tac", "lac")
    message = str(info.value)
    # 5 specials + 80 * (3**8 - 1) LTAC values + 6400 starts
    assert 5 + 80 * 6560 + 6400 == 531_205
    assert "531,205" in message and "262,144" in message and "LTAC" in message
    for alternative in ["frames=7", "scheme='class'", "temporal='volume'"]:
        assert alternative in message
    assert VideoTokenizer(8, (80, 80), 3, "tac", "lac", max_vocab=600_000).vocab.size == 531_205
    with pytest.raises(ValueError, match=r"needs a vocabulary of [\d,]+ tokens, above max_vocab=1,000"):
        VideoTokenizer(2, (80, 80), 3, "volume", "class", max_vocab=1_000)


@pytest.mark.parametrize(("temporal", "scheme", "starts", "order"), COMBOS)
def test_vocab_size_formula_matches_the_built_layout(temporal, scheme, starts, order):
    for frames, shape, num_classes, max_run in [(1, (4, 6), 3, None), (3, (5, 2), 4, 3), (4, (7, 7), 2, 9)]:
        tok = make_tokenizer(temporal, scheme, starts, order, frames, shape, num_classes, max_run)
        expected = video_vocab_size(
            tok.frames, shape, tok.num_classes, temporal, scheme, starts, order, max_run
        )
        assert tok.vocab.size == expected
        assert tok.bos == tok.vocab.bos["video"] and tok.task == "video"


def test_bad_arguments_raise_clear_errors():
    with pytest.raises(ValueError, match="two-class TAC map"):
        VideoTokenizer(2, (4, 4), 2, "tac", "binary")
    with pytest.raises(ValueError, match="temporal"):
        VideoTokenizer(2, (4, 4), 3, "time")
    with pytest.raises(ValueError, match="frames"):
        VideoTokenizer(0, (4, 4), 3)
    with pytest.raises(ValueError, match="binary"):
        VideoTokenizer(2, (4, 4), 3, "volume", "binary")
    tok = VideoTokenizer(2, (4, 4), 3)
    with pytest.raises(ValueError, match=r"\(frames, H, W\)"):
        tok.encode(np.zeros((3, 4, 4), np.uint8))
    with pytest.raises(ValueError, match="label 3"):
        tok.encode(np.full((2, 4, 4), 3))
    with pytest.raises(ValueError, match="3 dimensions"):
        tok.encode(np.zeros((4, 4), np.uint8))


@pytest.mark.parametrize("temporal", TEMPORAL)
def test_to_dict_round_trips_through_json(temporal):
    tok = VideoTokenizer(3, (6, 5), 3, temporal, "lac", "2d", "F", max_run=4)
    data = json.loads(json.dumps(tok.to_dict()))
    assert data["type"] == "video"
    again = VideoTokenizer.from_dict(data)
    video = synthetic_video(np.random.default_rng(4), 3, (6, 5), 3)
    assert np.array_equal(again.encode(video), tok.encode(video))
    with pytest.raises(ValueError, match="not a video tokenizer"):
        VideoTokenizer.from_dict(tok.image.to_dict())
    data["vocab"]["size"] += 1
    with pytest.raises(ValueError, match="vocabulary"):
        VideoTokenizer.from_dict(data)


# ------------------------------------------------------------------------------------------ decoding errors
@pytest.mark.parametrize("temporal", TEMPORAL)
def test_strict_raises_on_malformations_and_ignore_does_not(temporal):
    tok = VideoTokenizer(3, (4, 5), 3, temporal, "class")
    video = synthetic_video(np.random.default_rng(5), 3, (4, 5), 3)
    tokens = tok.encode(video)
    body, k = tokens[:-1], tok.tokens_per_run
    cases = {
        "no EOS": body,
        "partial run": np.concatenate([body, body[:1], [EOS]]),
        "expected": np.concatenate([body[1:], [body[0], EOS]]),
        "BOS": np.concatenate([[tok.bos], body[1:], [EOS]]),
        "before the end": np.concatenate([body[k:], body[:k], [EOS]]),
    }
    for words, sequence in cases.items():
        with pytest.raises(ValueError, match=words):
            tok.decode(sequence)
        decoded = tok.decode(sequence, errors="ignore")
        assert decoded.shape == video.shape and decoded.max() < 3


@pytest.mark.parametrize(("temporal", "scheme", "starts", "order"), COMBOS)
def test_ignore_never_raises_on_random_and_mutated_sequences(temporal, scheme, starts, order):
    rng = np.random.default_rng(6)
    tok = make_tokenizer(temporal, scheme, starts, order, 3, (4, 5), 3)
    tokens = tok.encode(synthetic_video(rng, tok.frames, (4, 5), tok.num_classes))
    for trial in range(150):
        if trial % 2:
            sequence = rng.integers(-3, tok.vocab.size + 3, rng.integers(0, 30))
        else:
            sequence = tokens.copy()
            where = rng.integers(0, sequence.size, 3)
            sequence[where] = rng.integers(0, tok.vocab.size, 3)
        video = tok.decode(sequence, errors="ignore")
        assert video.shape == (tok.frames, 4, 5) and video.max() < tok.num_classes


# ------------------------------------------------------------------------------------------ grammar


@pytest.mark.parametrize(("temporal", "scheme", "starts", "order"), COMBOS)
def test_grammar_samples_always_decode_strictly(temporal, scheme, starts, order):
    rng = np.random.default_rng(8)
    for frames, shape, max_run, max_len in [(2, (3, 4), None, 30), (3, (2, 2), 3, 8), (2, (1, 5), 2, 5)]:
        tok = make_tokenizer(temporal, scheme, starts, order, frames, shape, 3, max_run)
        for _ in range(4):
            for row in sample_under_grammar(tok, rng, 5, max_len):
                assert (row == EOS).sum() == 1
                assert tok.decode(row, errors="strict").shape == (tok.frames, *shape)


def test_grammar_allows_ground_truth():
    tok = VideoTokenizer(3, (6, 5), 3, "tac", "lac", "2d")
    videos_ = [synthetic_video(np.random.default_rng(s), 3, (6, 5), 3) for s in range(4)]
    assert_grammar_allows(tok, [tok.encode(v) for v in videos_])


# ------------------------------------------------------------------------------------------ real data


@pytest.mark.parametrize(("temporal", "scheme", "starts"), list(itertools.product(TEMPORAL, SCHEMES, STARTS)))
def test_fluo_hela_time_lapse_round_trips(temporal, scheme, starts):
    instances = hela_masks()  # (20, 700, 1100) uint16 instance ids
    assert instances.shape[0] == 20
    small = downsample_mask(instances, 10)  # (20, 70, 110), the same subsampling as images
    if scheme == "binary":
        video, num_classes = (small > 0).astype(np.uint8), 2
    else:  # three classes: background and two groups of cells by id parity
        video, num_classes = np.where(small > 0, 1 + small % 2, 0).astype(np.uint8), 3
    frames = 1 if (temporal, scheme) == ("tac", "binary") else 4
    tok = VideoTokenizer(frames, video.shape[1:], num_classes, temporal, scheme, starts)
    for first in range(0, 20, frames * 2 if frames > 1 else 5):
        window = video[first : first + frames]
        assert np.array_equal(tok.decode(tok.encode(window)), window)


def test_video_subsampling_is_the_image_rule_frame_by_frame():
    video = synthetic_video(np.random.default_rng(9), 4, (13, 10), 4)
    for method in ("nearest", "mode"):
        frames = np.stack([downsample_mask(frame, 3, method) for frame in video])
        assert np.array_equal(downsample_mask(video, 3, method), frames)


def test_huge_frame_counts_are_refused_at_once():
    started = time.perf_counter()
    with pytest.raises(ValueError, match="beyond int64"):
        VideoTokenizer(10**30, (16, 16), 3, temporal="tac")
    with pytest.raises(ValueError, match=r"needs a vocabulary of 2,560,000,037 tokens.*frames=\d+"):
        VideoTokenizer(10**7, (16, 16), 3, temporal="volume")
    assert time.perf_counter() - started < 2  # no search through every smaller frame count
