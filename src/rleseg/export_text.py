"""``rleseg export-text``: a dataset as (image, prompt, target text) records for fine-tuning vision-language models.

Any dataset a config reads goes through the config's patch pipeline without augmentation (what validation
reads: patches of ``data.patch.patch_size`` whose masks are ``factor`` times smaller); each patch becomes a PNG
and a record whose target is the text form of its tokens (:mod:`rleseg.tokens.text`), so a model fine-tuned
on them writes what :class:`~rleseg.llm.MaskLogitsProcessor` constrains and ``MaskText.decode`` reads. Each
record's metadata holds the fidelity of the factor on that patch (IoU per foreground class of the subsampled
mask, upsampled, against the patch's own labels): what a perfect text would still lose.

Formats: ``jsonl`` (one JSON record a line: image, prompt, text, meta) and ``llava`` (one JSON list of
LLaVA-style conversations, ``<image>`` in the human turn). Beside them: ``images/`` and ``text_form.json``
(the tokenizer, the class words, the factor, the mean fidelity), written atomically as a whole.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
from PIL import Image

from .atomic import atomic_folder, check_output_folder
from .experiment import build_plain_dataset, build_tokenizer, load_config
from .metrics import per_class_iou
from .tokens import upsample_mask
from .tokens.text import MaskText

FORMATS = ("jsonl", "llava")
PROMPT = "Segment the {classes} in this image. Answer with run-length text."


def class_words(names: list[str]) -> list[str]:
    """Class names as the single words a mask text needs (spaces and punctuation become '_')."""
    words = [re.sub(r"[^A-Za-z0-9_\-]+", "_", str(n).strip()) or f"class{i}" for i, n in enumerate(names)]
    return [w if w[0].isalpha() else f"c{w}" for w in words]


def export_text(config_path: str | Path, out: str | Path, split: str = "train", format: str = "jsonl",
                limit: int | None = None, prompt: str | None = None, overrides: list[str] = (),
                overwrite: bool = False) -> dict:
    """Write the records of ``split`` ("train" or "val": the config's split of that role) to ``out``; returns
    a summary (records, mean fidelity, files). ValueError naming the setting for bad input."""
    if format not in FORMATS:
        raise ValueError(f"unknown text format {format!r}; choose one of {', '.join(FORMATS)}")
    if split not in ("train", "val"):
        raise ValueError(f"split must be 'train' or 'val', got {split!r}")
    config = load_config(config_path, list(overrides))
    data = config.data
    names = data.class_names or [f"class{c}" for c in range(data.num_classes)]
    text = MaskText(build_tokenizer(config), class_words(names))
    dataset = build_plain_dataset(config, text.tokenizer, getattr(data, f"{split}_split"),
                                  getattr(data, f"{split}_options"))
    ask = (prompt or PROMPT).format(classes=", ".join(text.class_names[1:]))
    check_output_folder(out, [Path(config_path)])
    with atomic_folder(Path(out), overwrite) as folder:
        (folder / "images").mkdir()
        count = min(len(dataset), limit or len(dataset))
        records = [_record(dataset[i], text, data, ask, folder) for i in range(count)]
        _write_records(records, folder, format)
        fidelity = [r["meta"]["fidelity_miou"] for r in records if r["meta"]["fidelity_miou"] is not None]
        summary = {"records": len(records), "format": format, "split": split, "factor": data.patch.factor,
                   "mask_size": list(text.tokenizer.mask_size), "class_words": text.class_names, "prompt": ask,
                   "mean_fidelity_miou": float(np.mean(fidelity)) if fidelity else None,
                   "tokenizer": text.tokenizer.to_dict()}
        (folder / "text_form.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def _record(item: dict, text: MaskText, data, prompt: str, folder: Path) -> dict:
    name = f"images/{item['name']}_{int(item['index']):05d}.png"
    pixels = (item["image"].permute(1, 2, 0).numpy() * 255).round().clip(0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(folder / name)
    mask, small = item["mask"].numpy(), item["mask_small"].numpy()
    restored = upsample_mask(np.where(small == data.ignore_index, 0, small), data.patch.factor, mask.shape)
    iou = per_class_iou(restored, mask, data.num_classes, data.ignore_index)[1:]
    tokens = item["tokens"].numpy()
    meta = {"source": str(item["name"]), "box": [int(v) for v in item["box"]], "tokens": len(tokens),
            "fidelity_miou": None if np.isnan(iou).all() else round(float(np.nanmean(iou)), 4)}
    return {"image": name, "prompt": prompt, "text": text.to_text(tokens), "meta": meta}


def _write_records(records: list[dict], folder: Path, format: str) -> None:
    if format == "jsonl":
        lines = [json.dumps(r) for r in records]
        (folder / "records.jsonl").write_text("\n".join(lines) + ("\n" if lines else ""))
        return
    conversations = [{"id": Path(r["image"]).stem, "image": r["image"], "meta": r["meta"],
                      "conversations": [{"from": "human", "value": f"<image>\n{r['prompt']}"},
                                        {"from": "gpt", "value": r["text"]}]} for r in records]
    (folder / "llava.json").write_text(json.dumps(conversations, indent=1) + "\n")
