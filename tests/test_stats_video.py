"""rleseg.stats video and panoptic modes: token statistics against a direct computation, growth with N,
feasibility, fidelity, reading frames and TIFF stacks, and the ``rleseg stats --video / --panoptic`` CLI."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tifffile
from PIL import Image

from rleseg.imageio import MaskError
from rleseg.stats import StatsOptions
from rleseg.stats.panoptic import folder_panoptic_stats, panoptic_stats
from rleseg.stats.video import ENCODINGS, iter_videos, path_video_stats, video_stats, window_sizes
from rleseg.tokens import downsample_mask, upsample_mask
from rleseg.tokens.panoptic import PanopticTokenizer
from rleseg.tokens.video import VideoTokenizer, video_vocab_size


def moving_video(seed: int, frames: int, shape=(24, 30), num_classes: int = 3) -> np.ndarray:
    """A static blocky ground with a box drifting over it."""
    rng = np.random.default_rng(seed)
    ground = upsample_mask(rng.integers(0, num_classes, (shape[0] // 6 + 1, shape[1] // 6 + 1)), 6, shape)
    video = np.repeat(ground[None], frames, axis=0).astype(np.uint8)
    for t in range(frames):
        video[t, 4 + t : 10 + t, 3 + 2 * t : 12 + 2 * t] = num_classes - 1
    return video


def test_window_sizes():
    assert window_sizes(1) == (1,)
    assert window_sizes(8) == (1, 2, 4, 8)
    assert window_sizes(6) == (1, 2, 4, 6)
    with pytest.raises(ValueError, match="positive"):
        window_sizes(0)


def test_video_statistics_equal_direct_computation():
    videos = [("a", moving_video(0, 9)), ("b", moving_video(1, 5))]
    options = StatsOptions(factors=(1, 2), starts=("1d", "2d"))
    stats = video_stats(videos, 4, options)
    assert stats.frames == [1, 2, 4] and stats.num_videos == 2 and stats.num_frames == 14
    assert stats.num_classes == 3
    assert {(r.encoding, r.frames, r.starts, r.factor) for r in stats.rows} == {
        (e, n, s, f) for e in ENCODINGS for n in (1, 2, 4) for s in ("1d", "2d") for f in (1, 2)
    }
    for row in stats.rows:
        temporal, scheme = ENCODINGS[row.encoding]
        windows = [v[i : i + row.frames] for _, v in videos for i in range(0, v.shape[0] - row.frames + 1, row.frames)]
        lengths = []
        for window in windows:
            small = downsample_mask(window, row.factor)
            tok = VideoTokenizer(row.frames, small.shape[1:], 3, temporal, scheme, row.starts)
            lengths.append(tok.encode(small).size)
        assert row.windows == len(windows) == {1: 14, 2: 6, 4: 3}[row.frames]
        assert row.mean == pytest.approx(np.mean(lengths)) and row.max == max(lengths)
        assert row.per_frame == pytest.approx(row.mean / row.frames)
        assert row.vocab_size == video_vocab_size(row.frames, small.shape[1:], 3, temporal, scheme, row.starts)
        assert row.feasible
        assert row.fidelity.miou == (1.0 if row.factor == 1 else pytest.approx(stats.subsampling[2].miou, abs=0.05))
    json.dumps(stats.to_dict())  # serialisable


def test_growth_of_identical_frames_is_one_over_n_under_tac():
    video = np.repeat(moving_video(2, 1), 8, axis=0)
    stats = video_stats([("still", video)], 8, StatsOptions(factors=(1,), starts=("1d",)))
    growth = {(r.encoding, r.frames): r.growth for r in stats.rows}
    for n in (1, 2, 4, 8):
        assert growth[("TAC", n)] == pytest.approx(1 / n)
        assert growth[("LTAC", n)] == pytest.approx(1 / n)
        assert growth[("volume", n)] <= 1.0  # runs may only merge across frame boundaries


def test_infeasible_vocabulary_is_flagged_with_counts():
    video = moving_video(3, 8, shape=(80, 80))
    stats = video_stats([("v", video)], 8, StatsOptions(factors=(1,), starts=("1d",)))
    rows = {(r.encoding, r.frames): r for r in stats.rows}
    assert not rows[("LTAC", 8)].feasible and rows[("LTAC", 8)].vocab_size == 531_205
    assert rows[("TAC", 8)].feasible and rows[("LTAC", 4)].feasible
    assert rows[("LTAC", 8)].mean < rows[("volume", 8)].mean  # counted anyway, for comparison
    assert any("LTAC at 8 frames" in note for note in stats.notes)


def test_max_seq_len_cuts_and_costs_fidelity():
    video = moving_video(4, 4)
    stats = video_stats([("v", video)], 4, StatsOptions(factors=(1,), starts=("1d",), max_seq_len=20))
    rows = {(r.encoding, r.frames): r for r in stats.rows}
    assert rows[("volume", 4)].truncated == 1.0 and rows[("volume", 4)].fidelity.miou < 1.0


def test_short_videos_skip_long_windows_and_bad_input_raises():
    stats = video_stats([("v", moving_video(5, 3))], 8, StatsOptions(factors=(1,), starts=("1d",)))
    assert stats.frames == [1, 2] and any("8 frames skipped" in n for n in stats.notes)
    with pytest.raises(MaskError, match="frames, H, W"):
        video_stats([("flat", np.zeros((4, 4), np.uint8))], 2)
    with pytest.raises(MaskError, match="holds label 2"):
        video_stats([("v", moving_video(6, 2))], 2, StatsOptions(num_classes=2, factors=(1,)))


def test_reading_a_tiff_stack_and_a_folder_of_frames(tmp_path):
    video = moving_video(7, 6)
    tifffile.imwrite(tmp_path / "stack.tif", video)
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, frame in enumerate(video):
        Image.fromarray(frame).save(frames / f"f{t:03d}.png")
    (name, read), = list(iter_videos(tmp_path / "stack.tif"))
    assert np.array_equal(read, video)
    (name, read), = list(iter_videos(frames))
    assert np.array_equal(read, video) and name == str(frames)
    stacks = tmp_path / "stacks"
    stacks.mkdir()
    tifffile.imwrite(stacks / "a.tif", video)
    tifffile.imwrite(stacks / "b.tif", video[:3], photometric="minisblack")
    assert [v.shape[0] for _, v in iter_videos(stacks)] == [6, 3]
    a = path_video_stats(tmp_path / "stack.tif", 2, StatsOptions(factors=(1,)))
    b = path_video_stats(frames, 2, StatsOptions(factors=(1,)))
    assert [r.mean for r in a.rows] == [r.mean for r in b.rows]
    Image.fromarray(video[0]).save(stacks / "c.png")
    with pytest.raises(MaskError, match="mixes single frames"):
        list(iter_videos(stacks))
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(frames / "z.png")
    with pytest.raises(MaskError, match="share one size"):
        list(iter_videos(frames))
    with pytest.raises(MaskError, match="no such file"):
        path_video_stats(tmp_path / "missing.tif", 2)


# ------------------------------------------------------------------------------------------ panoptic
def instance_masks(seed: int, count: int = 4, shape=(30, 40)) -> list[tuple[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    masks = []
    for i in range(count):
        mask = np.zeros(shape, np.uint16)
        for ident in rng.choice(np.arange(1, 500), rng.integers(2, 8), replace=False):
            r, c = rng.integers(0, shape[0] - 4), rng.integers(0, shape[1] - 4)
            mask[r : r + rng.integers(3, 10), c : c + rng.integers(3, 12)] = ident
        masks.append((f"m{i}", mask))
    return masks


def test_panoptic_statistics_equal_direct_computation():
    masks = instance_masks(0)
    stats = panoptic_stats(masks, StatsOptions(factors=(1, 2), starts=("1d", "2d")))
    assert stats.num_images == 4
    assert stats.instances == pytest.approx(np.mean([np.unique(m[m > 0]).size for _, m in masks]))
    for row in stats.rows:
        lengths = []
        for _, mask in masks:
            small = downsample_mask(mask, row.factor)
            lengths.append(PanopticTokenizer(small.shape, 2, [1], row.starts).encode(small > 0, small).size)
        assert row.mean == pytest.approx(np.mean(lengths)) and row.max == max(lengths)
        if row.factor == 1:
            assert row.fidelity.miou == 1.0 and row.quality.pq == 1.0 and row.instances == stats.instances
        else:
            assert row.quality.pq < 1.0 and row.quality == stats.subsampling_quality[2]
    json.dumps(stats.to_dict())


def test_panoptic_cut_sequences_lose_instances():
    masks = instance_masks(1)
    stats = panoptic_stats(masks, StatsOptions(factors=(1,), starts=("1d",), max_seq_len=12))
    (row,) = stats.rows
    assert row.truncated == 1.0 and row.instances < stats.instances and row.quality.rq < 1.0


def test_panoptic_folder_and_errors(tmp_path):
    for name, mask in instance_masks(2, 3):
        tifffile.imwrite(tmp_path / f"{name}.tif", mask)
    stats = folder_panoptic_stats(tmp_path, StatsOptions(factors=(1,), starts=("1d",)))
    assert stats.num_images == 3
    with pytest.raises(MaskError, match="2-D integer instance map"):
        panoptic_stats([("bad", np.zeros((2, 3, 4), np.uint8))])


# ------------------------------------------------------------------------------------------ command line
def _run(capsys, *argv) -> tuple[int, str, str]:
    from rleseg.cli import main

    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_cli_video_json_equals_library_and_table(capsys, tmp_path):
    video = moving_video(8, 5, shape=(80, 80))
    tifffile.imwrite(tmp_path / "v.tif", video)
    code, out, _ = _run(capsys, "stats", tmp_path / "v.tif", "--video", 4, "--subsample", "1,2", "--json",
                        "--out", tmp_path / "v.json")
    assert code == 0
    data = json.loads(out)
    expected = path_video_stats(tmp_path / "v.tif", 4, StatsOptions(factors=(1, 2))).to_dict()
    assert data == json.loads(json.dumps({"source": str(tmp_path / "v.tif"), **expected}))
    assert json.loads((tmp_path / "v.json").read_text()) == data
    code, out, _ = _run(capsys, "stats", tmp_path / "v.tif", "--video", 8, "--subsample", 1, "--starts", "1d",
                        "--max-seq-len", 50)
    assert code == 0
    assert "windows of 1, 2, 4 frames" in out and "tokens/window" in out and "cut@50" in out
    assert "Note: windows of 8 frames skipped" in out


def test_cli_video_flags_infeasible_ltac(capsys, tmp_path):
    frames = tmp_path / "frames"
    frames.mkdir()
    for t, frame in enumerate(moving_video(9, 8, shape=(80, 80))):
        Image.fromarray(frame).save(frames / f"{t}.png")
    code, out, _ = _run(capsys, "stats", frames, "--video", 8, "--subsample", 1, "--starts", "1d")
    assert code == 0
    ltac8 = [line for line in out.splitlines() if line.startswith("| LTAC") and "| 8 " in line]
    assert len(ltac8) == 1 and "infeasible (531205)" in ltac8[0]


def test_cli_panoptic_json_equals_library_and_table(capsys, tmp_path):
    for name, mask in instance_masks(3, 3):
        Image.fromarray(mask.astype(np.uint16)).save(tmp_path / f"{name}.png")
    code, out, _ = _run(capsys, "stats", tmp_path, "--panoptic", "--subsample", "1,2", "--json")
    assert code == 0
    expected = folder_panoptic_stats(tmp_path, StatsOptions(factors=(1, 2))).to_dict()
    assert json.loads(out) == json.loads(json.dumps({"source": str(tmp_path), **expected}))
    code, out, _ = _run(capsys, "stats", tmp_path, "--panoptic", "--subsample", "1,2")
    assert code == 0 and "| PQ" in out and "instances per mask" in out


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--video", "2", "--panoptic"], "not allowed with argument"),
        (["--video", "0"], "--video: expected a positive integer"),
    ],
)
def test_cli_user_errors(capsys, tmp_path, argv, message):
    code, out, err = _run(capsys, "stats", tmp_path, *argv)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1


def test_cli_missing_video_is_a_user_error(capsys, tmp_path):
    code, _, err = _run(capsys, "stats", tmp_path / "missing.tif", "--video", 2)
    assert code == 2 and "no such file or directory" in err
