"""The on-screen tables of ``rleseg stats``: one per configuration, then per-class fidelity."""

from __future__ import annotations

from .core import DatasetStats
from .panoptic import PanopticStats
from .video import VideoStats


def _table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table with columns padded to equal width (numbers right-aligned)."""
    widths = [max(len(cell) for cell in column) for column in zip(header, *rows, strict=True)]

    def line(cells: list[str]) -> str:
        return "| " + " | ".join(c.rjust(w) if _is_number(c) else c.ljust(w)
                                 for c, w in zip(cells, widths, strict=True)) + " |"

    rule = "|" + "|".join("-" * (w + 2) for w in widths) + "|"
    return "\n".join([line(header), rule, *(line(r) for r in rows)])


def _is_number(text: str) -> bool:
    try:
        float(text.rstrip("%"))
    except ValueError:
        return False
    return True


def _length_table(header: list[str], rows: list[list[str]], results: list, max_seq_len: int | None) -> str:
    """``_table`` plus, with --max-seq-len, a last column: the share of sequences it would cut (each result's
    ``truncated``)."""
    if max_seq_len is not None:
        header = [*header, f"cut@{max_seq_len}"]
        rows = [[*cells, f"{100 * result.truncated:.1f}%"] for cells, result in zip(rows, results, strict=True)]
    return _table(header, rows)


def _rows_table(header: list[str], result, cells) -> str:
    """The length table of a statistics result: ``cells(row)`` for each of ``result.rows``."""
    rows = [cells(row) for row in result.rows]
    return _length_table(header, rows, result.rows, result.options.max_seq_len)


def format_score(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


# What these tables are not: a model writes the tokens of its training patches (or windows), not of whole
# masks, so model.max_seq_len comes from `stats --config`, which cuts them as training does.
NOT_PATCHES = ("These lengths are of whole masks, not of the training patches a model writes (data.patch."
               "patch_size, cropped, augmented and subsampled): do not set model.max_seq_len from them; "
               "'rleseg stats --config CONFIG' measures the patches as training sees them and gives the one "
               "recommendation for model.max_seq_len.")


# Instance-id masks read as label maps can have thousands of "classes"; the screen shows the first ones.
_MAX_CLASS_ROWS = 50


def format_stats(result: DatasetStats, source: str) -> str:
    """The on-screen report: a table per configuration, then per-class subsampling fidelity."""
    opts = result.options
    common = sorted(result.mask_sizes.items(), key=lambda item: -item[1])
    sizes = ", ".join(f"{size} ({count})" for size, count in common[:4])
    if len(common) > 4:
        sizes += f" and {len(common) - 4} more sizes"
    lines = [
        f"{source}: {result.num_images} masks, {result.num_classes} classes"
        + (" (largest label + 1)" if result.num_classes_inferred else "")
        + f", sizes {sizes}; order {opts.order}, downsample {opts.downsample_method}, "
        f"max_run {opts.max_run or 'one row'}, boundary tolerance {opts.tolerance}px",
        "",
    ]
    header = ["scheme", "starts", "factor", "mask", "vocab", "mean", "p50", "p95", "p99", "max", "mIoU", "mBF"]
    text = result.rows and result.rows[0].text_mean is not None
    lines.append(_rows_table(header + ["text mean", "text p99"] * text, result, lambda row: [
        row.scheme, row.starts, str(row.factor), "x".join(map(str, row.mask_size)), str(row.vocab_size),
        f"{row.mean:.1f}", str(row.p50), str(row.p95), str(row.p99), str(row.max),
        format_score(row.fidelity.miou), format_score(row.fidelity.mbf),
        *([f"{row.text_mean:.1f}", str(row.text_p99)] if text else [])]))
    lines.append("")
    first = [r for r in result.rows if (r.scheme, r.starts) == (result.rows[0].scheme, result.rows[0].starts)]
    lines.append(
        "Tokens per mask include EOS, not BOS; p99 of a whole mask, e.g. "
        f"{first[0].scheme}/{first[0].starts}: " + ", ".join(f"{r.p99} (factor {r.factor})" for r in first) + "."
    )
    lines.append(NOT_PATCHES)
    if text:
        lines.append(f"text mean / p99: the masks as text (rleseg.tokens.text) in the tokens of {opts.text_tokenizer}, "
                     "uncut, class words class1 ..")
    lines.append("mIoU / mBF: mean over foreground classes of the per-class mean over the images where the class "
                 "is in the ground truth or the reconstruction, scored at full resolution after nearest upsampling.")
    lines.extend(f"Note: {note}" for note in result.notes)

    factors = list(result.subsampling)
    header = ["class", *(f"IoU@{f}" for f in factors), *(f"BF@{f}" for f in factors)]
    rows = []
    for c in range(result.num_classes):
        scores = [result.subsampling[f] for f in factors]
        if all(s.images[c] == 0 for s in scores):
            continue
        rows.append([str(c), *(format_score(s.iou[c]) for s in scores), *(format_score(s.bf[c]) for s in scores)])
    lines += ["", "Per class, subsampling alone (encoding is lossless, so every scheme shares it"
              + (" when nothing is cut):" if opts.max_seq_len is not None else "):"),
              _table(header, rows[:_MAX_CLASS_ROWS])]
    if len(rows) > _MAX_CLASS_ROWS:
        lines.append(f"... and {len(rows) - _MAX_CLASS_ROWS} more classes (all of them in --json)")
    return "\n".join(lines)


def format_video_stats(result: VideoStats, source: str) -> str:
    """The on-screen report of ``stats --video``: one row per encoding x window size x starts x factor."""
    opts = result.options
    lines = [
        f"{source}: {result.num_videos} video(s), {result.num_frames} frames, {result.num_classes} classes"
        + (" (largest label + 1)" if result.num_classes_inferred else "")
        + f"; windows of {', '.join(map(str, result.frames))} frames (stride N); order {opts.order}, downsample "
        f"{opts.downsample_method}, max_run {opts.max_run or 'one row'}, max_vocab {result.max_vocab:,}",
        "",
    ]
    header = ["encoding", "N", "starts", "factor", "frame", "vocab", "windows", "tokens/window", "p99",
              "tokens/frame", "growth", "mIoU", "mBF"]
    lines += [
        _rows_table(header, result, lambda row: [
            row.encoding, str(row.frames), row.starts, str(row.factor), "x".join(map(str, row.mask_size)),
            str(row.vocab_size) if row.feasible else f"infeasible ({row.vocab_size})", str(row.windows),
            f"{row.mean:.1f}", str(row.p99), f"{row.per_frame:.1f}", "-" if row.growth is None else f"{row.growth:.3f}",
            format_score(row.fidelity.miou), format_score(row.fidelity.mbf)]),
        "",
        "Tokens per window include EOS, not BOS. growth = tokens of "
        "the windows / tokens of the same frames encoded one by one (below 1: the window compresses). volume = "
        "frame-major volume with LAC, TAC = time-as-class with separate class tokens, LTAC = TAC with LAC. "
        "mIoU / mBF: per window, frames pooled, at full resolution after nearest upsampling.",
        NOT_PATCHES.replace("whole masks", "windows of whole frames"),
    ]
    lines.extend(f"Note: {note}" for note in result.notes)
    return "\n".join(lines)


def format_panoptic_stats(result: PanopticStats, source: str) -> str:
    """The on-screen report of ``stats --panoptic``: one row per starts x factor."""
    opts = result.options
    lines = [
        f"{source}: {result.num_images} instance masks, {result.instances:.1f} instances per mask; order "
        f"{opts.order}, downsample {opts.downsample_method}, max_run {opts.max_run or 'one row'}, boundary "
        f"tolerance {opts.tolerance}px",
        "",
    ]
    header = ["starts", "factor", "mask", "vocab", "mean", "p50", "p95", "p99", "max", "instances", "mIoU", "mBF",
              "PQ", "SQ", "RQ"]
    lines += [
        _rows_table(header, result, lambda row: [
            row.starts, str(row.factor), "x".join(map(str, row.mask_size)), str(row.vocab_size), f"{row.mean:.1f}",
            str(row.p50), str(row.p95), str(row.p99), str(row.max), f"{row.instances:.1f}",
            format_score(row.fidelity.miou), format_score(row.fidelity.mbf), format_score(row.quality.pq),
            format_score(row.quality.sq), format_score(row.quality.rq)]),
        "",
        "Tokens per mask include EOS, not BOS. instances: per mask "
        "after subsampling and decoding. mIoU / mBF: foreground vs background; PQ / SQ / RQ: the instances "
        "(COCO panopticapi rules, background void), at full resolution after nearest upsampling.",
        NOT_PATCHES,
    ]
    lines.extend(f"Note: {note}" for note in result.notes)
    return "\n".join(lines)
