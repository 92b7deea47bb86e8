"""Pictures of what the model predicted: overlays, side-by-side panels with a legend, and token runs.

numpy + Pillow only. Images are (H, W, 3) uint8 or float in [0, 1]; masks are (H, W) integer label maps.
"""

from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from .tokens.runs import Runs

IGNORE_COLOUR = (255, 255, 255)


def palette(num_classes: int) -> np.ndarray:
    """(num_classes, 3) uint8 colours: black background, then well-separated hues."""
    colours = np.zeros((max(num_classes, 1), 3), np.uint8)
    for c in range(1, num_classes):
        hue = (c - 1) * 0.618033988749895 % 1.0  # golden-ratio steps keep neighbours apart
        colours[c] = np.round(np.array(colorsys.hsv_to_rgb(hue, 0.75, 0.95)) * 255)
    return colours


def to_uint8_image(image: np.ndarray) -> np.ndarray:
    """(H, W), (H, W, 3) or (3, H, W) image, float in [0, 1] or uint8 -> (H, W, 3) uint8."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[0] in (1, 3) and image.shape[-1] not in (1, 3):
        image = np.moveaxis(image, 0, -1)
    if image.ndim == 2:
        image = image[..., None]
    if image.shape[-1] == 1:
        image = np.repeat(image, 3, axis=-1)
    if image.dtype != np.uint8:
        image = np.clip(np.asarray(image, np.float64) * 255 + 0.5, 0, 255).astype(np.uint8)
    return image


def class_colours(num_classes: int, colours: np.ndarray | list | None = None) -> np.ndarray:
    """(num_classes, 3) uint8: ``colours`` (e.g. a dataset's colour table, as a checkpoint stores it) when
    given, else :func:`palette`."""
    if colours is None:
        return palette(num_classes)
    table = np.asarray(colours, np.uint8).reshape(-1, 3)
    if len(table) != num_classes:
        raise ValueError(f"{len(table)} class colours for {num_classes} classes")
    return table


def colourise(mask: np.ndarray, num_classes: int, ignore_index: int | None = 255,
              colours: np.ndarray | None = None) -> np.ndarray:
    """(H, W) labels -> (H, W, 3) uint8 colours (``colours``, default the palette); ignored and out-of-range
    labels are white."""
    mask = np.asarray(mask).astype(np.int64)
    colours = class_colours(num_classes, colours)
    valid = (mask >= 0) & (mask < num_classes)
    out = np.full((*mask.shape, 3), IGNORE_COLOUR, np.uint8)
    out[valid] = colours[mask[valid]]
    return out


def overlay(image: np.ndarray, mask: np.ndarray, num_classes: int, alpha: float = 0.6,
            colours: np.ndarray | None = None) -> np.ndarray:
    """Class colours over a greyscale copy of the image (so colours read true whatever the image's own
    hues); background pixels show the greyscale image."""
    rgb = to_uint8_image(image).astype(np.float32)
    if rgb.shape[:2] != np.shape(mask):
        raise ValueError(f"image {rgb.shape[:2]} and mask {np.shape(mask)} differ in size")
    grey = rgb @ np.array([0.299, 0.587, 0.114], np.float32)
    base = np.repeat(grey[..., None], 3, axis=-1)
    colours = colourise(mask, num_classes, colours=colours).astype(np.float32)
    foreground = (np.asarray(mask) > 0)[..., None]
    blended = np.where(foreground, (1 - alpha) * base + alpha * colours, base)
    return np.round(blended).astype(np.uint8)


def _legend(class_names: list[str], width: int, colours: np.ndarray | None = None) -> Image.Image:
    font = ImageFont.load_default()
    colours = class_colours(len(class_names), colours)
    row, swatch = 14, 10
    per_line = max(1, width // 110)
    lines = -(-len(class_names) // per_line)
    legend = Image.new("RGB", (width, lines * row + 4), (255, 255, 255))
    draw = ImageDraw.Draw(legend)
    for i, name in enumerate(class_names):
        x, y = (i % per_line) * 110 + 4, (i // per_line) * row + 2
        draw.rectangle([x, y + 1, x + swatch, y + 1 + swatch], fill=tuple(int(v) for v in colours[i]), outline=0)
        draw.text((x + swatch + 4, y), str(name)[:15], fill=(0, 0, 0), font=font)
    return legend


def comparison_panel(
    image: np.ndarray,
    ground_truth: np.ndarray | None,
    prediction: np.ndarray,
    class_names: list[str],
    title: str = "",
    min_size: int = 160,
    colours: np.ndarray | None = None,
) -> Image.Image:
    """Image | ground-truth overlay | prediction overlay, with headings and a class legend.

    Tiles smaller than ``min_size`` pixels are enlarged by an integer factor (nearest) to stay legible.
    ``colours``: (C, 3) class colours, default the palette.
    """
    num_classes = len(class_names)
    tiles = [("image", to_uint8_image(image))]
    if ground_truth is not None:
        tiles.append(("ground truth", overlay(image, ground_truth, num_classes, colours=colours)))
    tiles.append(("prediction", overlay(image, prediction, num_classes, colours=colours)))
    zoom = max(1, -(-min_size // max(tiles[0][1].shape[:2])))
    tiles = [(name, np.repeat(np.repeat(tile, zoom, 0), zoom, 1)) for name, tile in tiles]
    height, width = tiles[0][1].shape[:2]
    header, gap = 14, 4
    body_width = len(tiles) * (width + gap) - gap
    panel_width = max(body_width, 220)
    legend = _legend(class_names, panel_width, colours)
    top = header * (2 if title else 1)
    panel = Image.new("RGB", (panel_width, top + height + legend.height), (255, 255, 255))
    draw = ImageDraw.Draw(panel)
    font = ImageFont.load_default()
    if title:
        draw.text((2, 1), title, fill=(0, 0, 0), font=font)
    for i, (name, tile) in enumerate(tiles):
        x = i * (width + gap)
        draw.text((x + 2, top - header + 1), name, fill=(0, 0, 0), font=font)
        panel.paste(Image.fromarray(tile), (x, top))
    panel.paste(legend, (0, top + height))
    return panel


def with_legend(picture: np.ndarray, class_names: list[str], colours: np.ndarray | None = None) -> np.ndarray:
    """``picture`` (H, W, 3) uint8 with the class legend (names and colours) below it, as (H', W, 3) uint8.

    The legend is at least 120 pixels wide, so that a name fits beside its swatch; a narrower picture is
    padded on the right with white."""
    picture = to_uint8_image(picture)
    height, width = picture.shape[:2]
    legend = _legend(class_names, max(width, 120), colours)
    sheet = Image.new("RGB", (legend.width, height + legend.height), (255, 255, 255))
    sheet.paste(Image.fromarray(picture), (0, 0))
    sheet.paste(legend, (0, height))
    return np.asarray(sheet)


def draw_runs(
    runs: Runs, mask_size: tuple[int, int], num_classes: int, order: str = "C", scale: int = 8
) -> Image.Image:
    """Each run as a coloured bar on the mask grid, split where it wraps a row, with a dot at its start.

    Makes a token sequence visible: one bar per run, in the class colour, on a light grid.
    """
    height, width = mask_size
    rows, cols = (height, width) if order == "C" else (width, height)
    canvas = Image.new("RGB", (cols * scale + 1, rows * scale + 1), (250, 250, 250))
    draw = ImageDraw.Draw(canvas)
    for line in range(rows + 1):
        draw.line([(0, line * scale), (cols * scale, line * scale)], fill=(225, 225, 225))
    for line in range(cols + 1):
        draw.line([(line * scale, 0), (line * scale, rows * scale)], fill=(225, 225, 225))
    colours = palette(num_classes)
    for start, length, cls in zip(runs.starts.tolist(), runs.lengths.tolist(), runs.classes.tolist(), strict=True):
        colour = tuple(int(v) for v in colours[min(cls, num_classes - 1)])
        position, remaining = start, length
        while remaining > 0:  # a run wraps across scan lines: draw one bar per line it covers
            row, col = divmod(position, cols)
            span = min(remaining, cols - col)
            draw.rectangle(
                [col * scale + 1, row * scale + 2, (col + span) * scale - 1, (row + 1) * scale - 2], fill=colour
            )
            position, remaining = position + span, remaining - span
        row, col = divmod(start, cols)
        centre = (col * scale + scale // 2, row * scale + scale // 2)
        draw.ellipse([centre[0] - 2, centre[1] - 2, centre[0] + 2, centre[1] + 2], fill=(0, 0, 0))
    if order == "F":
        canvas = canvas.transpose(Image.Transpose.TRANSPOSE)
    return canvas


def tokens_picture(tokenizer, panels: list[tuple[str, np.ndarray]]) -> Image.Image:
    """Token sequences side by side, each drawn as its runs on the mask grid (:func:`draw_runs`) under a
    caption "<name>: <runs> runs, <tokens> tokens". ``panels``: (name, tokens) pairs; malformed runs
    are left out as lenient decoding drops them."""
    scale = max(2, 320 // max(tokenizer.mask_size))
    font = ImageFont.load_default()
    drawn = []
    for caption, tokens in panels:
        runs = tokenizer.decode_runs(tokens, errors="ignore")
        picture = draw_runs(runs, tokenizer.mask_size, tokenizer.num_classes, tokenizer.order, scale)
        drawn.append((f"{caption}: {len(runs)} runs, {len(tokens)} tokens", picture))
    width = sum(p.width for _, p in drawn) + 8 * (len(drawn) - 1)
    sheet = Image.new("RGB", (max(width, 200), max(p.height for _, p in drawn) + 16), (255, 255, 255))
    draw, x = ImageDraw.Draw(sheet), 0
    for caption, picture in drawn:
        draw.text((x + 2, 2), caption, fill=(0, 0, 0), font=font)
        sheet.paste(picture, (x, 16))
        x += picture.width + 8
    return sheet
