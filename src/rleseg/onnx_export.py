"""``rleseg export --format onnx``: a model as ONNX files that onnxruntime runs without rleseg's torch code,
and ``rleseg-onnx.json`` (:data:`rleseg.onnx_runtime.DESCRIPTION`) saying what each file takes and gives,
the tokenizer, the patch size and the image normalisation. :mod:`rleseg.onnx_runtime` is one program that
reads them (numpy and onnxruntime only).

Each part is a plain tensor-in, tensor-out module around the model's own code, exported with
``torch.export`` (the batch and window dimensions dynamic) into one self-contained ``.onnx`` file:

- dense models: ``dense.onnx``, images -> per-pixel logits (the label map is their argmax);
- token models: ``encoder.onnx`` (backbone, transformer encoder, pyramid, pointer head: images -> what every
  decoder pass reads), ``decoder.onnx`` (one decoder pass over a window of tokens, each row at its own
  position, the self-attention key-value cache an input and an output: step-by-step decoding is windows
  of one token, draft verification longer ones) and, with a refiner, ``refiner.onnx`` (the decoded masks
  redrawn at the patch's resolution within their boundary band).

Not covered yet, refused at export in one line naming the setting: video models, one decoder step per run
(``model.run_step``), several sequences an image (per-class and band tokenizers), panoptic token models
and dense models with an instance rule (``model.instances``).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import warnings
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from . import __version__
from .imageio import Normalization
from .inference import stored_normalization
from .models import DenseModel, Pix2Seq, load_checkpoint, read_checkpoint_info
from .models.pix2seq import Encoded
from .models.pyramid import on_grid
from .models.refine import upsample_nearest
from .models.transformer import DecoderCache
from .onnx_runtime import DESCRIPTION, FORMAT, FORMAT_VERSION
from .tokens import EOS, PAD

IMAGES = "(batch, 3, P, P) float32 RGB, P = images.patch_size, values made [0, 1] as images.normalize says"


def write_onnx_folder(weights: Path, folder: Path, metrics: Sequence[Path]) -> dict:
    """The ONNX files and their description of the checkpoint ``weights`` into ``folder`` (``export.FORMATS``)."""
    if metrics:
        raise ValueError("--scores goes into the model card of --format hf; --format onnx writes no card")
    missing = [name for name in ("onnx", "onnxscript", "onnxruntime") if importlib.util.find_spec(name) is None]
    if missing:
        raise ValueError(f"--format onnx needs {', '.join(missing)}: pip install 'rleseg[onnx]'")
    model = load_checkpoint(weights, "cpu")
    try:
        check_exportable(model)
    except ValueError as error:
        raise ValueError(f"{weights}: {error}") from None
    extra = read_checkpoint_info(weights)[1]
    export_onnx(model, folder, stored_normalization(weights), extra.get("class_names"))
    return {"files": sorted(p.name for p in folder.iterdir()), "scores": []}


def check_exportable(model: nn.Module) -> None:
    """ValueError naming the setting when the ONNX path does not cover ``model`` yet (see the module doc)."""
    tokenizer = model.tokenizer
    later = "is not covered by --format onnx yet; use --format hf"
    if tokenizer.task == "video":
        raise ValueError(f"a video model (tokenizer task 'video') {later}")
    if isinstance(model, DenseModel):
        if model.instances is not None:
            raise ValueError(f"model.instances {model.config.instances!r} (a torch instance rule) {later}")
        return
    if not isinstance(model, Pix2Seq):
        raise ValueError(f"a {type(model).__name__} {later}")
    if model.run_step is not None:
        raise ValueError(f"model.run_step (one decoder step per run) {later}")
    if len(tokenizer.prompts) > 1:
        raise ValueError(f"tokenizer type {tokenizer.to_dict().get('type')!r} ({len(tokenizer.prompts)} sequences an "
                         f"image) {later}")
    if tokenizer.task != "semantic":
        raise ValueError(f"tokenizer task {tokenizer.task!r} with a token model {later}")


# ----------------------------------------------------------------------------- the parts
class _Part(nn.Module):
    """A part of ``model`` as a plain tensor-in, tensor-out module; ``inputs`` and ``outputs`` name its tensors
    (the ONNX file's names) and say what each holds (the description repeats it)."""

    inputs: ClassVar[dict[str, str]] = {}
    outputs: ClassVar[dict[str, str]] = {}

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    @property
    def output_names(self) -> list[str]:
        return list(self.outputs)


class EncoderPart(_Part):
    """images -> what every decoder pass reads, computed once per batch: the cross-attention keys and values of
    the memory for each decoder layer, the token table and, with a refiner, the pyramid's cells."""

    inputs: ClassVar[dict[str, str]] = {"images": IMAGES}
    outputs: ClassVar[dict[str, str]] = {
        "cross_k": "(L, batch, H, N, D/H) float32: keys of the encoder's N tokens, per decoder layer and head",
        "cross_v": "(L, batch, H, N, D/H) float32: their values",
        "table": "(batch, V, D) float32 per image (the pointer head writes the image into its start rows), or "
                 "(V, D) shared by all images: the tied token table",
        "cells": "(batch, S, D) float32: the feature pyramid at the S mask cells, in the tokenizer's scan order "
                 "(only with a refiner, which reads them)",
    }

    @property
    def output_names(self) -> list[str]:
        return [name for name in self.outputs if name != "cells" or self.model.refiner is not None]

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, ...]:
        encoded = self.model.encode(images)
        keys_values = self.model.new_cache(encoded, 1).memory_kv  # the cross-attention half of a cache
        out = (torch.stack([k for k, _ in keys_values]), torch.stack([v for _, v in keys_values]), encoded.table)
        return out if self.model.refiner is None else (*out, encoded.cells)


class _FixedCache:
    """A decoder layer's self-attention cache in the exported graph, :class:`~rleseg.models.layers.KVCache`'s
    ``write_rows`` done out of place over the whole cache. KVCache returns the cache only up to the furthest
    position written (``int(index.max())``), a length that depends on the data, which torch.export cannot
    trace; here the cache is always max_seq_len long and the mask hides every position a row has not
    written up to its query, so attention sees what it sees with KVCache (masked positions weigh 0)."""

    def __init__(self, k: torch.Tensor, v: torch.Tensor):
        self.k, self.v = k, v  # (R, H, M, D/H)

    def write_rows(self, k: torch.Tensor, v: torch.Tensor, pos: torch.Tensor
                   ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        index = pos[:, None] + torch.arange(k.shape[2], device=pos.device)  # (R, T)
        slots = index[:, None, :, None].expand(-1, k.shape[1], -1, k.shape[-1])
        self.k, self.v = self.k.scatter(2, slots, k), self.v.scatter(2, slots, v)
        mask = torch.arange(self.k.shape[2], device=pos.device) <= index[:, :, None]  # (R, T, M)
        return self.k, self.v, mask[:, None]


class DecoderPart(_Part):
    """One decoder pass over a window of tokens, the cache in and out (``Pix2Seq.window_logits``)."""

    inputs: ClassVar[dict[str, str]] = {
        "tokens": "(rows, window) int64: the window's input tokens (the first is BOS at position 0)",
        "pos": "(rows,) int64: the position of each row's first window token; pos + window <= max_seq_len",
        "table": "the encoder's table: (rows, V, D), each row's image's, or (V, D) shared",
        "cross_k": "(L, rows, H, N, D/H) float32: the encoder's cross_k of each row's image",
        "cross_v": "(L, rows, H, N, D/H) float32: the encoder's cross_v of each row's image",
        "self_k": "(L, rows, H, max_seq_len, D/H) float32: the self-attention keys so far (zeros to start); a "
                  "row reads its positions below pos, whatever lies beyond (a rejected draft) is ignored",
        "self_v": "(L, rows, H, max_seq_len, D/H) float32: the self-attention values so far",
    }
    outputs: ClassVar[dict[str, str]] = {
        "logits": "(rows, window, V) float32: scores of the token after each input token",
        "self_k_out": "self_k with the window's positions written: the next pass's self_k",
        "self_v_out": "self_v with the window's positions written: the next pass's self_v",
    }

    def forward(self, tokens: torch.Tensor, pos: torch.Tensor, table: torch.Tensor, cross_k: torch.Tensor,
                cross_v: torch.Tensor, self_k: torch.Tensor, self_v: torch.Tensor) -> tuple[torch.Tensor, ...]:
        layers = [_FixedCache(k, v) for k, v in zip(self_k.unbind(0), self_v.unbind(0), strict=True)]
        cache = DecoderCache(list(zip(cross_k.unbind(0), cross_v.unbind(0), strict=True)), layers)
        # window_logits reads the table and the cache, not the memory (its keys and values are in the cache)
        logits = self.model.window_logits(tokens, pos, Encoded(None, table, None), cache)
        return logits, torch.stack([c.k for c in layers]), torch.stack([c.v for c in layers])


class RefinerPart(_Part):
    """Decoded masks on the grid -> labels at the patch's resolution (``Refiner.labels``), for every patch:
    Refiner.labels sends only the patches with a class boundary through the convolutions (a batch that
    depends on the data); here all go through, and a patch without one keeps its coarse labels all the same,
    as its band is empty."""

    inputs: ClassVar[dict[str, str]] = {
        "images": IMAGES,
        "cells": "(batch, S, D) float32: the encoder's cells",
        "coarse": "(batch, h, w) int64: the decoded label maps on the tokenizer's grid",
    }
    outputs: ClassVar[dict[str, str]] = {
        "labels": "(batch, P, P) int64: the label maps, redrawn within the band of their class boundaries"}

    def forward(self, images: torch.Tensor, cells: torch.Tensor, coarse: torch.Tensor) -> torch.Tensor:
        refiner, factor = self.model.refiner, self.model.grid_factor
        logits = refiner(images, on_grid(cells, self.model.tokenizer), coarse)  # (B, C, P, P)
        band = refiner.band_pixels(coarse, factor)
        return torch.where(band, logits.argmax(1), upsample_nearest(coarse, factor))


class DensePart(_Part):
    """images -> per-pixel logits (``DenseModel.forward``)."""

    inputs: ClassVar[dict[str, str]] = {"images": IMAGES}
    outputs: ClassVar[dict[str, str]] = {
        "logits": "(batch, C, P, P) float32: per-pixel class scores; the label map is their argmax over C"}

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.model(images)


# ----------------------------------------------------------------------------- export
def export_onnx(model: nn.Module, folder: str | Path, normalization: Normalization | None = None,
                class_names: list[str] | None = None) -> dict:
    """Write ``model``'s parts as ONNX files and their description (:data:`DESCRIPTION`) into ``folder``;
    returns the description. ``model`` is put in eval mode on the CPU. ValueError (:func:`check_exportable`)
    for what the ONNX path does not cover."""
    check_exportable(model)
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    model = model.cpu().eval()
    files = {}
    with torch.no_grad():
        for name, (part, sample, dynamic) in _parts(model).items():
            path = folder / f"{name}.onnx"
            _export(part.eval(), sample, dynamic, path)
            files[name] = _interface(path, part)
    description = _description(model, normalization or Normalization(), class_names, files)
    (folder / DESCRIPTION).write_text(json.dumps(description, indent=2) + "\n")
    return description


def _parts(model: nn.Module) -> dict[str, tuple[nn.Module, tuple, dict]]:
    """name -> (module, sample inputs, their dynamic dimensions). Samples have 2 rows and windows of 2 tokens:
    torch.export takes a dimension of size 0 or 1 in a sample for a constant."""
    images = torch.rand(2, 3, model.config.image_size, model.config.image_size)
    batch = {0: torch.export.Dim("batch")}
    if isinstance(model, DenseModel):
        return {"dense": (DensePart(model), (images,), {"images": batch})}
    encoder = EncoderPart(model)
    cross_k, cross_v, table, *cells = encoder(images)
    shape = list(cross_k.shape)  # (L, B, H, N, D/H) -> the self-attention cache's (L, B, H, max_seq_len, D/H)
    shape[3] = model.max_seq_len
    rows, window = torch.export.Dim("rows"), torch.export.Dim("window", max=model.max_seq_len)
    decoder = (torch.full((2, 2), EOS), torch.zeros(2, dtype=torch.long), table, cross_k, cross_v,
               torch.zeros(shape), torch.zeros(shape))
    on_rows = {1: rows}
    parts = {
        "encoder": (encoder, (images,), {"images": batch}),
        "decoder": (DecoderPart(model), decoder, {"tokens": {0: rows, 1: window}, "pos": {0: rows},
                                                   "table": {0: rows} if table.ndim == 3 else None,
                                                   "cross_k": on_rows, "cross_v": on_rows, "self_k": on_rows,
                                                   "self_v": on_rows}),
    }
    if model.refiner is not None:
        coarse = torch.zeros(2, *model.tokenizer.mask_size, dtype=torch.long)
        parts["refiner"] = (RefinerPart(model), (images, cells[0], coarse),
                            {"images": batch, "cells": batch, "coarse": batch})
    return parts


def _export(part: nn.Module, sample: tuple, dynamic: dict, path: Path) -> None:
    """``part`` to the ONNX file ``path``, weights inside it (no external data file: a model of rleseg's
    sizes is far below protobuf's 2 GB), through torch.export."""
    # Notes that are not the user's business: a dimension name shared by several inputs (batch) makes the
    # exporter warn that it keeps one name, and its optimiser logs that it leaves a shared table (a constant
    # output of the encoder) as it is.
    optimiser, level = logging.getLogger("onnx_ir"), logging.getLogger("onnx_ir").level
    optimiser.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            torch.onnx.export(part, sample, path, dynamo=True, external_data=False, verbose=False,
                              input_names=list(part.inputs), output_names=part.output_names,
                              dynamic_shapes=dynamic)
    finally:
        optimiser.setLevel(level)


def _interface(path: Path, part: nn.Module) -> dict:
    """The file's inputs and outputs as the ONNX graph declares them (name, dtype, shape: a number or the name of
    a dynamic dimension), each with what it holds."""
    import onnx

    graph = onnx.load(path, load_external_data=False).graph
    meaning = {**part.inputs, **part.outputs}

    def tensor(value) -> dict:
        kind = value.type.tensor_type
        return {"name": value.name, "dtype": onnx.helper.tensor_dtype_to_np_dtype(kind.elem_type).name,
                "shape": [d.dim_param or d.dim_value for d in kind.shape.dim], "holds": meaning[value.name]}

    return {"file": path.name, "inputs": [tensor(v) for v in graph.input], "outputs": [tensor(v) for v in graph.output]}


def _description(model: nn.Module, normalization: Normalization, class_names: list[str] | None,
                 files: dict) -> dict:
    tokenizer, size = model.tokenizer, model.config.image_size
    description = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "rleseg_version": __version__,
        "model": "dense" if isinstance(model, DenseModel) else "token",
        "images": {"patch_size": size, "layout": f"(batch, 3, {size}, {size}) float32 RGB in [0, 1], channels first",
                   "normalize": asdict(normalization),
                   "how": "images of another size are cut into P x P patches (rleseg predict: sliding windows "
                          "at the image's scale, the patches' label maps stitched by vote)"},
        "num_classes": int(tokenizer.num_classes),
        "class_names": class_names,
        "tokenizer": tokenizer.to_dict(),
        "labels": {"grid_factor": model.grid_factor, "output_factor": 1 if model.refines else model.grid_factor,
                   "what": "patch pixels per cell of the label maps: the tokenizer's grid (grid_factor) the "
                           "tokens decode to, and those the model gives (output_factor): 1 with the refiner or "
                           "a dense model, at the patch's resolution"},
        "files": files,
    }
    if isinstance(model, Pix2Seq):
        description["decoding"] = {
            "first_token": int(tokenizer.bos), "eos": EOS, "pad": PAD, "max_len": model.max_seq_len,
            "rule": "greedy: encoder once; then per step the decoder over each row's last token at position "
                    "step, the next token the highest-scoring one the tokenizer's grammar allows "
                    "(rleseg.tokens.from_dict(tokenizer).grammar(rows): allowed(max_len - step), advance), "
                    "until every row wrote EOS or max_len tokens; tokenizer.decode(tokens up to EOS) gives "
                    "the mask on the grid, which the refiner (when present) redraws",
        }
    return description
