"""Batching: pad token sequences to the longest in the batch, truncate at ``max_seq_len``, count it.

Works with ``num_workers > 0`` (``Collate`` is a picklable object, not a closure) and with
``DistributedSampler``: the datasets derive all randomness from (seed, epoch, index), see
``rleseg.data.dataset``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from rleseg.tokens import PAD, split_sequences


def sequence_rows(tokens: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """A sample's (T,) tokens -> the sequences the model reads, each up to and including its EOS: one for
    most tokenizers, one per foreground class for a ``PerClassTokenizer``'s flat form."""
    return tuple(torch.from_numpy(row) for row in split_sequences(tokens.numpy()))


def pad_tokens(sequences: list[torch.Tensor], max_seq_len: int | None = None) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Right-pad 1-D int64 sequences with PAD to the batch maximum (capped at ``max_seq_len``).

    Returns:
        tokens (B, T) int64; padding_mask (B, T) bool, True at padding (the
        ``key_padding_mask`` convention of torch attention); the number of sequences cut at
        ``max_seq_len`` (a cut sequence loses its tail and its EOS, as in the reference code).
    """
    lengths = torch.tensor([len(seq) for seq in sequences], dtype=torch.int64)
    truncated = 0 if max_seq_len is None else int((lengths > max_seq_len).sum())
    if max_seq_len is not None:
        lengths = lengths.clamp(max=max_seq_len)
    width = int(lengths.max()) if len(sequences) else 0
    tokens = torch.full((len(sequences), width), PAD, dtype=torch.int64)
    for row, (seq, length) in enumerate(zip(sequences, lengths.tolist(), strict=True)):
        tokens[row, :length] = seq[:length]
    padding_mask = torch.arange(width)[None, :] >= lengths[:, None]  # (B, T)
    return tokens, padding_mask, truncated


@dataclass
class Collate:
    """``DataLoader(collate_fn=Collate(max_seq_len))``: one batch dict from a list of samples.

    Tensors of equal shape are stacked ((B, ...)); ``tokens`` are padded (see :func:`pad_tokens`)
    and come with ``padding_mask`` (R, T) bool and ``lengths`` (R,), one row per sequence
    (:func:`sequence_rows`: R = B, or B * (C-1) with per-class sequences, each image's rows adjacent);
    ints become an int64 tensor (B,), other values (names, tensors of unequal shape) lists; ``num_skipped`` is summed.
    ``num_truncated`` counts the sequences cut at ``max_seq_len``.
    """

    max_seq_len: int | None = None

    def __call__(self, samples: list[dict]) -> dict:
        if not samples:
            raise ValueError("cannot collate an empty list of samples")
        batch: dict = {}
        rows = [row for s in samples for row in sequence_rows(s["tokens"])]
        tokens, padding_mask, truncated = pad_tokens(rows, self.max_seq_len)
        batch.update(tokens=tokens, padding_mask=padding_mask, lengths=(~padding_mask).sum(1), num_truncated=truncated)
        for key in samples[0]:
            if key == "tokens":
                continue
            values = [s[key] for s in samples]
            if key == "num_skipped":
                batch[key] = int(sum(values))
            elif isinstance(values[0], torch.Tensor) and all(v.shape == values[0].shape for v in values):
                batch[key] = torch.stack(values)
            elif all(isinstance(v, int) for v in values):
                batch[key] = torch.tensor(values, dtype=torch.int64)
            else:
                batch[key] = values
        return batch


def collate(samples: list[dict]) -> dict:
    """:class:`Collate` without a length cap."""
    return Collate()(samples)
