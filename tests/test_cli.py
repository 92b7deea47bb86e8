"""The rleseg command line: outputs against the library, user errors, and no torch import."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import tifffile
from PIL import Image

from rleseg import __version__
from rleseg.cli import EXAMPLES, main
from rleseg.imageio import read_label_map
from rleseg.stats import StatsOptions, image_stats
from rleseg.tokens import BandTokenizer, Tokenizer, downsample_mask, split_sequences


@pytest.fixture
def masks(tmp_path) -> Path:
    """A folder of three 3-class PNG masks, one of them with a size not divisible by 4."""
    rng = np.random.default_rng(0)
    folder = tmp_path / "masks"
    folder.mkdir()
    for i, (h, w) in enumerate([(32, 32), (30, 45), (32, 32)]):
        coarse = rng.integers(0, 3, size=(h // 4 + 1, w // 3 + 1))
        mask = np.kron(coarse, np.ones((4, 3), np.int64))[:h, :w].astype(np.uint8)
        Image.fromarray(mask).save(folder / f"m{i}.png")
    return folder


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.parametrize(
    ("scheme", "starts", "order", "subsample"),
    [("lac", "1d", "C", 1), ("class", "2d", "F", 4), ("lac", "2d", "C", 3)],
)
def test_tokenize_matches_tokenizer(capsys, masks, scheme, starts, order, subsample):
    path = masks / "m1.png"
    code, out, err = _run(capsys, "tokenize", path, "--scheme", scheme, "--starts", starts, "--order", order,
                          "--subsample", subsample)
    assert code == 0 and err == ""
    tokens_line, summary = out.strip().split("\n")
    mask = read_label_map(path)
    small = downsample_mask(mask, subsample)
    tokenizer = Tokenizer(small.shape, int(mask.max()) + 1, scheme, starts, order)
    expected = tokenizer.encode(small)
    assert [int(t) for t in tokens_line.split()] == expected.tolist()
    runs = (len(expected) - 1) // tokenizer.tokens_per_run
    assert f"{runs} runs, {len(expected)} tokens (EOS included), vocab size {tokenizer.vocab.size}" in summary
    assert str(path) in summary


def test_tokenize_writes_band_sequences_and_refuses_them_without_one_d_starts(capsys, masks):
    path = masks / "m0.png"
    code, out, err = _run(capsys, "tokenize", path, "--extent", "end", "--bands", "4")
    assert code == 0 and err == ""
    tokens_line, summary = out.strip().split("\n")
    tokenizer = BandTokenizer((32, 32), 3, extent="end", bands=4)
    expected = tokenizer.encode(read_label_map(path))
    assert [int(t) for t in tokens_line.split()] == expected.tolist()
    longest = max(len(seq) for seq in split_sequences(expected))
    assert f"{tokenizer.count_runs(expected)[0]} runs, {len(expected)} tokens (EOS included), 4 bands, the longest " \
           f"{longest} tokens, vocab size {tokenizer.vocab.size}" in summary
    code, out, err = _run(capsys, "tokenize", path, "--bands", "4", "--starts", "2d")
    assert code == 2 and out == "" and err.strip() == f"rleseg: error: {path}: --bands needs --starts 1d, got 2d"


def test_tokenize_writes_run_ends_and_refuses_them_without_one_d_starts(capsys, masks):
    path = masks / "m0.png"
    code, out, err = _run(capsys, "tokenize", path, "--extent", "end")
    assert code == 0 and err == ""
    tokens_line, summary = out.strip().split("\n")
    tokenizer = Tokenizer((32, 32), 3, extent="end")
    assert [int(t) for t in tokens_line.split()] == tokenizer.encode(read_label_map(path)).tolist()
    assert "lac/1d extent end order C" in summary
    code, out, err = _run(capsys, "tokenize", path, "--extent", "end", "--starts", "2d")
    assert code == 2 and "needs starts '1d'" in err and "Traceback" not in err


def test_tokenize_json_and_options(capsys, masks):
    path = masks / "m0.png"
    code, out, _ = _run(capsys, "tokenize", path, "--json", "--num-classes", "5", "--max-run", "7",
                        "--downsample-method", "mode", "--subsample", "2")
    assert code == 0
    data = json.loads(out)
    tokenizer = Tokenizer.from_dict(data["tokenizer"])
    assert (tokenizer.num_classes, tokenizer.max_run, tokenizer.mask_size) == (5, 7, (16, 16))
    small = downsample_mask(read_label_map(path), 2, "mode")
    assert data["tokens"] == tokenizer.encode(small).tolist()
    assert data["summary"]["tokens"] == len(data["tokens"])
    assert data["summary"]["vocab_size"] == tokenizer.vocab.size


def test_tokenize_palette_png_and_tiff(capsys, tmp_path):
    labels = np.zeros((6, 8), np.uint8)
    labels[1:3, 2:7] = 2
    labels[4, :] = 1
    image = Image.fromarray(labels, mode="P")
    image.putpalette([200, 10, 10] * 256)  # every index the same colour: only the indices carry labels
    image.save(tmp_path / "p.png")
    tifffile.imwrite(tmp_path / "t.tif", labels.astype(np.uint16))
    expected = Tokenizer((6, 8), 3).encode(labels).tolist()
    for name in ("p.png", "t.tif"):
        code, out, _ = _run(capsys, "tokenize", tmp_path / name)
        assert code == 0
        assert [int(t) for t in out.split("\n")[0].split()] == expected


def test_tokenize_binary_mask_defaults_to_two_classes(capsys, tmp_path):
    Image.fromarray(np.zeros((5, 5), np.uint8)).save(tmp_path / "empty.png")
    code, out, _ = _run(capsys, "tokenize", tmp_path / "empty.png", "--scheme", "binary")
    assert code == 0
    assert out.split("\n")[0] == "1"  # EOS alone
    assert "2 classes" in out and "0 runs, 1 tokens" in out


def test_stats_json_equals_library(capsys, masks, tmp_path):
    out_file = tmp_path / "out" / "stats.json"
    code, out, err = _run(capsys, "stats", masks, "--subsample", "1,4", "--schemes", "lac,class",
                          "--starts", "1d", "--json", "--out", out_file, "--no-progress")
    assert code == 0 and err == ""
    data = json.loads(out)
    assert json.loads(out_file.read_text()) == data
    direct = image_stats(
        [(str(p), read_label_map(p)) for p in sorted(masks.glob("*.png"))],
        StatsOptions(factors=(1, 4), schemes=("lac", "class"), starts=("1d",)),
    ).to_dict()
    assert data["rows"] == json.loads(json.dumps(direct["rows"]))
    assert data["num_classes"] == 3 and data["num_images"] == 3
    assert [(r["scheme"], r["factor"]) for r in data["rows"]] == [("lac", 1), ("class", 1), ("lac", 4), ("class", 4)]


def test_stats_table(capsys, masks):
    code, out, _ = _run(capsys, "stats", masks, "--subsample", "1,2,4", "--tolerance", "1")
    assert code == 0
    direct = image_stats([(str(p), read_label_map(p)) for p in sorted(masks.glob("*.png"))],
                         StatsOptions(factors=(1, 2, 4), tolerance=1))
    first = direct.rows[0]
    assert (first.scheme, first.starts, first.factor) == ("lac", "1d", 1)
    assert f"p99 of a whole mask, e.g. lac/1d: {first.p99} (factor 1)" in out
    # Whole masks are not what a model writes: the one max_seq_len recommendation is stats --config's.
    assert "not of the training patches" in out and "'rleseg stats --config CONFIG' measures the patches" in out
    assert "choose max_seq_len" not in out.lower()
    lines = out.splitlines()
    header = next(i for i, line in enumerate(lines) if line.startswith("| scheme"))
    table = lines[header: header + 2 + len(direct.rows)]
    assert len({len(line) for line in table}) == 1  # aligned
    for line, row in zip(table[2:], direct.rows, strict=True):
        cells = [c.strip() for c in line.strip("|").split("|")]
        assert cells[:3] == [row.scheme, row.starts, str(row.factor)]
        assert cells[8:10] == [str(row.p99), str(row.max)]
        assert cells[10] == f"{row.fidelity.miou:.4f}"
    assert "binary' skipped" in out
    assert "3 masks, 3 classes (largest label + 1)" in out


def test_stats_max_seq_len_column(capsys, masks):
    code, out, _ = _run(capsys, "stats", masks, "--subsample", "1", "--max-seq-len", "5")
    assert code == 0
    assert "cut@5" in out and "100.0%" in out


def test_stats_ignore_index_and_many_classes(capsys, tmp_path):
    mask = np.zeros((12, 12), np.uint8)
    mask[2:5, 2:9] = 1
    mask[8:, :] = 255
    Image.fromarray(mask).save(tmp_path / "ignore.png")
    code, out, _ = _run(capsys, "stats", tmp_path, "--subsample", "1,2", "--ignore-index", "255", "--json")
    assert code == 0 and json.loads(out)["num_classes"] == 2
    code, out, _ = _run(capsys, "stats", tmp_path, "--subsample", "1")
    assert code == 0 and "256 classes (largest label + 1)" in out
    labels = np.arange(80 * 4, dtype=np.uint16).reshape(16, 20) % 80
    Image.fromarray(labels).save(tmp_path / "many.png")
    code, out, _ = _run(capsys, "stats", tmp_path, "--subsample", "1", "--pattern", "many.png")
    assert code == 0 and "... and 30 more classes (all of them in --json)" in out


def test_version(capsys):
    code, out, _ = _run(capsys, "--version")
    assert code == 0 and out.strip() == f"rleseg {__version__}"


def test_examples(capsys, tmp_path):
    code, out, _ = _run(capsys, "examples", "--out", tmp_path)
    assert code == 0
    for path in sorted(EXAMPLES.glob("*.png")):
        assert path.name in out
    assert len(list(EXAMPLES.glob("*.png"))) >= 3
    data = json.loads((tmp_path / "stats.json").read_text())
    assert data["num_images"] == len(list(EXAMPLES.glob("*.png")))
    assert "p99 of a whole mask" in out and "rleseg stats --config CONFIG" in out


def test_examples_are_small_label_masks():
    paths = sorted(EXAMPLES.glob("*.png"))
    assert sum(p.stat().st_size for p in paths) < 64_000
    classes = sorted(int(read_label_map(p).max()) + 1 for p in paths)
    assert classes[0] == 2 and classes[-1] == 20
    assert any(Image.open(p).mode == "P" for p in paths)


# ----------------------------------------------------------------------------- user errors
@pytest.fixture
def bad_files(tmp_path, masks) -> dict[str, Path]:
    Image.fromarray(np.arange(48, dtype=np.uint8).reshape(4, 4, 3)).save(tmp_path / "rgb.png")
    (tmp_path / "broken.png").write_text("not a png")
    Image.fromarray(np.full((4, 4), 7, np.uint8)).save(tmp_path / "seven.png")
    (tmp_path / "empty").mkdir()
    return {"masks": masks, "tmp": tmp_path}


USER_ERRORS = [
    (["tokenize", "{tmp}/missing.png"], "missing.png: no such file"),
    (["tokenize", "{tmp}"], "is a directory, expected a mask image file"),
    (["tokenize", "{tmp}/broken.png"], "broken.png: cannot read image"),
    (["tokenize", "{tmp}/rgb.png"], "rgb.png: is a colour image (mode RGB)"),
    (["tokenize", "{tmp}/seven.png", "--num-classes", "3"], "seven.png: holds label 7"),
    (["tokenize", "{masks}/m0.png", "--scheme", "binary"], "scheme 'binary' needs num_classes == 2"),
    (["tokenize", "{masks}/m0.png", "--scheme", "rle"], "invalid choice: 'rle'"),
    (["tokenize", "{masks}/m0.png", "--subsample", "0"], "--subsample: expected a positive integer, got '0'"),
    (["tokenize", "{masks}/m0.png", "--num-classes", "1"], "--num-classes: expected at least 2 classes"),
    (["tokenize", "{masks}/m0.png", "--max-run", "x"], "--max-run: expected a positive integer, got 'x'"),
    (["tokenize"], "required: MASK_IMAGE"),
    (["stats", "{tmp}/nowhere"], "nowhere: no such directory"),
    (["stats", "{tmp}/empty"], "no .png, .tif or .tiff masks"),
    (["stats", "{masks}", "--num-classes", "2"], "m0.png: holds label 2, expected labels < --num-classes 2"),
    (["stats", "{masks}", "--schemes", "lac,foo"], "invalid choice 'foo'"),
    (["stats", "{masks}", "--subsample", "1,-2"], "--subsample: expected a positive integer, got '-2'"),
    (["stats", "{masks}", "--tolerance", "1.5"], "--tolerance: expected an integer >= 0, got '1.5'"),
    (["frobnicate"], "invalid choice: 'frobnicate'"),
    (["stats", "{masks}", "--schemes", "binary"], "nothing to report, scheme 'binary' skipped"),
    ([], "required: COMMAND"),
]


@pytest.mark.parametrize(("argv", "message"), USER_ERRORS)
def test_user_errors_print_one_line(capsys, bad_files, argv, message):
    argv = [a.format(**bad_files) for a in argv]
    code, out, err = _run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert err.count("\n") == 1 and err.startswith("rleseg: error: ")
    assert message in err
    assert "Traceback" not in err


def test_stats_out_to_unwritable_path(capsys, masks, tmp_path):
    (tmp_path / "file").write_text("")
    code, _, err = _run(capsys, "stats", masks, "--subsample", "1", "--out", tmp_path / "file" / "x.json")
    assert code == 2 and err.startswith("rleseg: error: ") and "x.json" in err


# ----------------------------------------------------------------------------- as a program
def _console_script() -> str:
    script = Path(sys.executable).with_name("rleseg")
    return str(script) if script.exists() else shutil.which("rleseg")


def test_console_script(masks):
    script = _console_script()
    assert script, "the rleseg console script is not installed"
    done = subprocess.run([script, "tokenize", str(masks / "m0.png"), "--scheme", "class"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0 and "runs" in done.stdout.splitlines()[-1]
    failed = subprocess.run([script, "stats", str(masks), "--num-classes", "2"],
                            capture_output=True, text=True, timeout=60)
    assert failed.returncode == 2 and failed.stdout == ""
    assert failed.stderr.startswith("rleseg: error: ") and failed.stderr.count("\n") == 1
    assert "Traceback" not in failed.stderr


def test_tokenize_and_stats_do_not_import_torch(masks):
    code = (
        "import sys, contextlib, io\n"
        "import rleseg.cli\n"
        "loaded = 'torch' in sys.modules\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        f"    rleseg.cli.main(['tokenize', {str(masks / 'm0.png')!r}])\n"
        f"    rleseg.cli.main(['stats', {str(masks)!r}, '--subsample', '1,2'])\n"
        "    rleseg.cli.main(['examples'])\n"
        "print(loaded, 'torch' in sys.modules)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["False", "False"]
