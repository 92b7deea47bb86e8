"""Reading images and label maps: one pixel limit for every reader, checked on the header before any pixel
is read (decompression bombs), and label maps refused in a lossy format whatever their name."""

import os
import struct
import subprocess
import sys
import tracemalloc
import warnings
import zlib

import numpy as np
import pytest
import tifffile
from PIL import Image

from rleseg import imageio
from rleseg.imageio import MaskError, image_shape, read_image, read_label_map

READERS = [read_label_map, read_image, image_shape]
BOMB = "declares 20000x20000 = 400000000 pixels, more than the limit of 100000000 pixels; set RLESEG_MAX_PIXELS"


def tiff_bomb(path):
    """419 KB on disk, 20000 x 20000 uint8 once decoded: 391 tiles, each the same compressed zero tile."""
    tile = zlib.compress(bytes(1024 * 1024), 9)
    tifffile.imwrite(path, data=(tile for _ in range(20**2)), shape=(20000, 20000), dtype="uint8",
                     tile=(1024, 1024), compression="zlib")
    return path


def png_header(path, width, height):
    """A PNG whose header declares width x height grey pixels (its data is empty)."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) +
                     chunk(b"IEND", b""))
    return path


@pytest.fixture(autouse=True)
def default_limit(monkeypatch):
    monkeypatch.delenv("RLESEG_MAX_PIXELS", raising=False)
    monkeypatch.setattr(imageio, "MAX_PIXELS", None)


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_a_tiff_bomb_is_refused_from_its_header(tmp_path, reader):
    path = tiff_bomb(tmp_path / "bomb.tif")
    assert path.stat().st_size < 500_000
    tracemalloc.start()
    try:
        with pytest.raises(MaskError, match=f"^{path}: {BOMB}"):
            reader(path)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 20_000_000  # the 400 MB of pixels were never allocated


@pytest.mark.parametrize("reader", READERS, ids=lambda r: r.__name__)
def test_png_bombs_get_the_same_limit_and_message(tmp_path, reader):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no DecompressionBombWarning beside the one clear error
        with pytest.raises(MaskError, match=BOMB):
            reader(png_header(tmp_path / "bomb.png", 20000, 20000))  # past Pillow's own error threshold
        with pytest.raises(MaskError, match="declares 10000x12000 = 120000000 pixels, more than the limit"):
            reader(png_header(tmp_path / "big.png", 12000, 10000))  # where Pillow would only have warned
    assert Image.MAX_IMAGE_PIXELS == imageio.DEFAULT_MAX_PIXELS  # Pillow's guard follows the same number


def test_the_limit_is_configurable(tmp_path, monkeypatch):
    Image.fromarray(np.zeros((10, 10), np.uint8)).save(tmp_path / "grey.png")
    tifffile.imwrite(tmp_path / "rgb.tif", np.zeros((10, 10, 3), np.uint8))
    tifffile.imwrite(tmp_path / "stack.tif", np.zeros((2, 10, 10), np.uint8))
    monkeypatch.setenv("RLESEG_MAX_PIXELS", "100")
    assert read_image(tmp_path / "rgb.tif").shape == (10, 10, 3)  # colour samples are not pixels
    assert read_label_map(tmp_path / "grey.png").shape == (10, 10) and Image.MAX_IMAGE_PIXELS == 100
    with pytest.raises(MaskError, match=r"stack.tif: declares 2x10x10 = 200 pixels, more than the limit of 100"):
        read_image(tmp_path / "stack.tif")  # a stack counts all its frames
    monkeypatch.setenv("RLESEG_MAX_PIXELS", "99")
    for reader in READERS:
        with pytest.raises(MaskError, match=r"grey.png: declares 10x10 = 100 pixels, more than the limit of 99"):
            reader(tmp_path / "grey.png")
    monkeypatch.setattr(imageio, "MAX_PIXELS", 100)  # a program's setting wins over the environment
    assert imageio.max_pixels() == 100 and image_shape(tmp_path / "grey.png") == (10, 10)
    monkeypatch.setattr(imageio, "MAX_PIXELS", None)
    for bad in ("many", "0", "-5"):
        monkeypatch.setenv("RLESEG_MAX_PIXELS", bad)
        with pytest.raises(MaskError, match=f"RLESEG_MAX_PIXELS='{bad}': expected a positive whole number"):
            read_label_map(tmp_path / "grey.png")


def test_label_maps_in_a_lossy_format_are_refused_whatever_their_name(tmp_path):
    labels = np.kron(np.arange(4).reshape(2, 2), np.ones((8, 8))).astype(np.uint8)
    Image.fromarray(labels).save(tmp_path / "mask.png", format="JPEG")
    with pytest.raises(MaskError, match=r"mask.png: holds JPEG data, not a PNG, TIFF or BMP label map"):
        read_label_map(tmp_path / "mask.png")
    assert read_image(tmp_path / "mask.png").shape == (16, 16, 3)  # as an image it is fine
    tifffile.imwrite(tmp_path / "mask.tif", labels)
    entry = struct.pack("<HHIH", 259, 3, 1, 1)  # Compression = none; made JPEG (7), as a JPEG TIFF says
    data = (tmp_path / "mask.tif").read_bytes()
    assert data.count(entry) == 1
    (tmp_path / "mask.tif").write_bytes(data.replace(entry, struct.pack("<HHIH", 259, 3, 1, 7)))
    with pytest.raises(MaskError, match=r"mask.tif: is a JPEG-compressed TIFF; save label maps losslessly"):
        read_label_map(tmp_path / "mask.tif")
    for fmt, name in (("PNG", "a.png"), ("BMP", "b.bmp"), ("TIFF", "c.png")):  # TIFF data named .png is lossless
        Image.fromarray(labels).save(tmp_path / name, format=fmt)
        assert np.array_equal(read_label_map(tmp_path / name), labels)


# ----------------------------------------------------------------------------- the command line
def rleseg(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "rleseg.cli", *map(str, argv)], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})


def one_error_line(done, match):
    assert done.returncode == 2 and done.stdout == "", done.stderr
    assert done.stderr.count("\n") == 1 and done.stderr.startswith("rleseg: error: ") and match in done.stderr
    assert "Traceback" not in done.stderr


def test_commands_refuse_bombs_and_lossy_masks_in_one_line(tmp_path):
    bombs, lossy = tmp_path / "bombs", tmp_path / "lossy"
    bombs.mkdir()
    lossy.mkdir()
    Image.fromarray(np.eye(8, dtype=np.uint8)).save(bombs / "a.png")
    tiff_bomb(bombs / "b.tif")
    Image.fromarray(np.eye(8, dtype=np.uint8) * 2).save(lossy / "a.png", format="JPEG")
    for argv, match in (
        (["tokenize", bombs / "b.tif"], f"{bombs / 'b.tif'}: {BOMB}"),
        (["stats", bombs, "--no-progress"], f"{bombs / 'b.tif'}: {BOMB}"),
        (["tokenize", lossy / "a.png"], "a.png: holds JPEG data"),
        (["stats", lossy, "--no-progress"], "a.png: holds JPEG data"),
    ):
        one_error_line(rleseg(*argv), match)
    one_error_line(rleseg("tokenize", bombs / "a.png", env={"RLESEG_MAX_PIXELS": "63"}),
                   "a.png: declares 8x8 = 64 pixels, more than the limit of 63 pixels")
    one_error_line(rleseg("tokenize", bombs / "a.png", env={"RLESEG_MAX_PIXELS": "lots"}),
                   "RLESEG_MAX_PIXELS='lots': expected a positive whole number of pixels")
    assert rleseg("tokenize", bombs / "a.png", env={"RLESEG_MAX_PIXELS": "64"}).returncode == 0
