"""A model that ``rleseg export --format onnx`` wrote, run with onnxruntime and numpy: no torch, and of rleseg
only the tokenizer (numpy), whose grammar constrains decoding as in rleseg's own generation.

    >>> from rleseg.onnx_runtime import load
    >>> model = load("model-onnx")                 # the folder: *.onnx and rleseg-onnx.json
    >>> labels = model.predict(patches)            # (B, 3, P, P) float32 RGB in [0, 1] -> (B, h, w) int64

The folder's :data:`DESCRIPTION` says what each file takes and gives, the tokenizer, the patch size and how
image values were normalised in training (rleseg.onnx_export writes it); this module is one reader of it.
A token model runs its encoder once per batch, then decodes greedily under the tokenizer's grammar, a
decoder pass of one token per step, the self-attention cache passed from one pass to the next; rows that
wrote EOS leave the batch. These are the tokens of rleseg's ``model.generate`` with the default
``DecodingOptions`` (greedy, constrained, step by step) up to float rounding, which changes a token only
where two scores tie that closely. The decoded masks are then redrawn by the refiner when the model has one.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from .tokens import EOS, PAD, MaskTokenizer, from_dict

DESCRIPTION = "rleseg-onnx.json"
FORMAT, FORMAT_VERSION = "rleseg-onnx", 1


def load(folder: str | Path, threads: int | None = None) -> OnnxModel:
    """The exported model in ``folder``, its files opened with onnxruntime (``threads``: intra-op threads, None:
    onnxruntime's default). ValueError naming the file for a folder that is not such an export."""
    folder = Path(folder)
    path = folder / DESCRIPTION
    try:
        description = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not readable ({type(error).__name__}: {error}); expected the folder that "
                         "rleseg export --format onnx wrote") from None
    if not isinstance(description, dict) or description.get("format") != FORMAT:
        raise ValueError(f"{path}: not the description of an rleseg ONNX export (format {FORMAT!r})")
    if description.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format version {description.get('format_version')!r}, this rleseg reads "
                         f"{FORMAT_VERSION}; export the model again")
    try:
        import onnxruntime
    except ImportError:
        raise ValueError("running an ONNX export needs onnxruntime: pip install 'rleseg[onnx]'") from None
    options = onnxruntime.SessionOptions()
    options.log_severity_level = 3  # errors only: the graph optimiser's notes are not the user's business
    if threads:
        options.intra_op_num_threads = threads
    sessions = {}
    for name, part in description["files"].items():
        file = folder / part["file"]
        if not file.is_file():
            raise ValueError(f"{file}: missing; {path} names it as the {name} part")
        sessions[name] = onnxruntime.InferenceSession(str(file), options, providers=["CPUExecutionProvider"])
    return OnnxModel(description, sessions)


class OnnxModel:
    """The parts of an exported model as onnxruntime sessions (``dense``, or ``encoder``, ``decoder`` and
    maybe ``refiner``) and what :data:`DESCRIPTION` says of them."""

    def __init__(self, description: dict, sessions: dict):
        self.description, self.sessions = description, sessions
        self.tokenizer: MaskTokenizer = from_dict(description["tokenizer"])
        self.patch_size = int(description["images"]["patch_size"])

    def predict(self, patches: np.ndarray, refine: bool = True) -> np.ndarray:
        """Patches (B, 3, P, P) float32 RGB in [0, 1] -> label maps (B, h, w) int64: on the tokenizer's grid,
        or at the patch's resolution from a dense model or the refiner (``refine`` False: the decoded masks
        alone)."""
        patches = self._checked(patches)
        if "dense" in self.sessions:
            (logits,) = self.sessions["dense"].run(None, {"images": patches})
            return logits.argmax(1)
        encoded = self.encode(patches)
        coarse = np.stack([self.tokenizer.decode(cut_after_eos(row), errors="strict")
                           for row in self.generate(encoded)]).astype(np.int64)
        if not refine or "refiner" not in self.sessions:
            return coarse
        (labels,) = self.sessions["refiner"].run(None, {"images": patches, "cells": encoded["cells"],
                                                        "coarse": coarse})
        return labels

    def encode(self, patches: np.ndarray) -> dict[str, np.ndarray]:
        """The encoder's outputs by name (cross_k, cross_v, table and, with a refiner, cells)."""
        session = self.sessions["encoder"]
        outputs = session.run(None, {"images": self._checked(patches)})
        return dict(zip((o.name for o in session.get_outputs()), outputs, strict=True))

    def generate(self, encoded: dict[str, np.ndarray]) -> np.ndarray:
        """Greedy tokens (B, T) int64 under the grammar, after the first token (not included): each row its
        body, EOS, then PAD up to the longest row (T at most ``max_len``)."""
        decoding = self.description["decoding"]
        max_len, batch = int(decoding["max_len"]), encoded["cross_k"].shape[1]
        grammar = self.tokenizer.grammar(batch)
        tokens = np.full((batch, max_len + 1), PAD, np.int64)
        tokens[:, 0] = decoding["first_token"]
        live, state = np.arange(batch), self.start(encoded)
        for step in range(max_len):
            logits, state = self.window(tokens[live, step : step + 1], np.full(len(live), step, np.int64), state)
            chosen = np.where(grammar.allowed(max_len - step), logits[:, -1], -np.inf).argmax(1)
            grammar.advance(chosen)
            tokens[live, step + 1] = chosen
            if grammar.done.all():
                break
            if grammar.done.any():  # rows that ended leave the batch (the rest write the same tokens)
                keep = np.flatnonzero(~grammar.done)
                grammar.select(keep)
                live, state = live[keep], select_rows(state, keep)
        return tokens[:, 1 : step + 2]

    def start(self, encoded: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """The decoder's inputs other than the window for a first pass over ``encoded``'s images, a row each:
        their encoding, and an empty cache of max_len positions."""
        layers, batch, heads, _, width = encoded["cross_k"].shape
        empty = np.zeros((layers, batch, heads, int(self.description["decoding"]["max_len"]), width), np.float32)
        return {"table": encoded["table"], "cross_k": encoded["cross_k"], "cross_v": encoded["cross_v"],
                "self_k": empty, "self_v": empty}

    def window(self, tokens: np.ndarray, pos: np.ndarray, state: dict[str, np.ndarray]
               ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
        """One decoder pass: ``tokens`` (R, T) int64 at positions pos[r] .. pos[r]+T-1 (``pos`` (R,) int64) ->
        (logits (R, T, V) float32 of the token after each, the state with the cache holding the window)."""
        logits, keys, values = self.sessions["decoder"].run(None, {"tokens": tokens, "pos": pos, **state})
        return logits, {**state, "self_k": keys, "self_v": values}

    def _checked(self, patches: np.ndarray) -> np.ndarray:
        patches = np.asarray(patches)
        size = self.patch_size
        if patches.ndim != 4 or patches.shape[1:] != (3, size, size):
            raise ValueError(f"patches must be (B, 3, {size}, {size}) float32 RGB in [0, 1], got shape "
                             f"{patches.shape}")
        return np.ascontiguousarray(patches, np.float32)


def select_rows(state: dict[str, np.ndarray], rows: np.ndarray) -> dict[str, np.ndarray]:
    """The decoder state of the rows ``rows`` indexes: the row axis is 0 of a per-image table, 1 of the keys
    and values (layers first); a shared (V, D) table serves every row."""
    selected = {name: value[:, rows] for name, value in state.items() if name != "table"}
    table = state["table"]
    return {**selected, "table": table[rows] if table.ndim == 3 else table}


def cut_after_eos(tokens: np.ndarray) -> np.ndarray:
    """A generated row up to and including its first EOS (all of it without one)."""
    eos = np.flatnonzero(tokens == EOS)
    return tokens[: eos[0] + 1] if eos.size else tokens
