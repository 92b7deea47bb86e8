"""One decoder step per run (``model.run_step: true``), composed by :class:`~rleseg.models.pix2seq.Pix2Seq`.

For runs of a start and an end cell (1-D starts, tokenizer extent "end", scheme lac or binary) the decoder
reads a run's two tokens as one input, a projection of their two table rows (initialised to their sum),
and writes both from one state: the start (or EOS) from the state's logits, the end from a light head
that reads the state and the row of the start just chosen, scored against the same tied table. Sequences,
grammar and tokens are unchanged; a sequence takes half the decoder positions. Training applies the end
head to the true start.

Shapes: R = token rows, T = positions, D = width.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from rleseg.tokens import PAD, MaskTokenizer

RUN_STEP_SLOTS = (("start", "end"), ("start", "end_class"))  # the runs model.run_step writes in one step


def check_run_step(tokenizer: MaskTokenizer) -> None:
    """ValueError naming what the tokenizer writes unless its runs are a start and an end."""
    slots = getattr(tokenizer, "slots", None)
    if slots not in RUN_STEP_SLOTS:
        written = f"runs of {' + '.join(slots)}" if slots else f"{type(tokenizer).__name__} sequences"
        raise ValueError("model.run_step needs runs of a start and an end (1-D starts, tokenizer extent 'end', "
                         f"scheme lac or binary); this tokenizer writes {written}: set model.run_step false")


class RunStep(nn.Module):
    """The run step's two layers: the pair's input projection and the end head."""

    def __init__(self, dim: int, mlp_dim: int):
        super().__init__()
        self.pair_proj = nn.Linear(2 * dim, dim)
        self.end_query = nn.Sequential(nn.Linear(2 * dim, mlp_dim), nn.GELU(), nn.Linear(mlp_dim, dim))
        self.end_ln = nn.LayerNorm(dim)

    def reset_parameters(self) -> None:
        """The pair's input is the sum of its start and end rows, and the end query adds nothing to the
        state, at first."""
        with torch.no_grad():
            dim = self.pair_proj.out_features
            self.pair_proj.weight.copy_(torch.eye(dim).repeat(1, 2))
            nn.init.zeros_(self.end_query[-1].weight)

    def embed(self, rows: torch.Tensor) -> torch.Tensor:
        """The table rows of run pairs (R, T, 2, D) -> the decoder's inputs (R, T, D)."""
        return self.pair_proj(rows.flatten(-2))

    def end_states(self, states: torch.Tensor, start_rows: torch.Tensor) -> torch.Tensor:
        """Decoder states (R, T, D) and the table rows of the start chosen from each (R, T, D) -> the states
        (R, T, D) the run's end is scored from: moved by what the head learns of the start's row (its cell,
        and with the pointer head the image there)."""
        return self.end_ln(states + self.end_query(torch.cat([states, start_rows], dim=-1)))


def run_pairs(tokens: torch.Tensor) -> torch.Tensor:
    """A first input token and whole runs of two, (R, 1 + 2k) -> the decoder's run-step inputs (R, 1 + k, 2):
    (first, PAD), then (start, end) of each run."""
    head = F.pad(tokens[:, :1], (0, 1), value=PAD)
    return torch.cat([head[:, None], tokens[:, 1:].reshape(len(tokens), -1, 2)], dim=1)


def teacher_forced_pairs(input_tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Teacher-forced inputs (R, T) -> (the run pairs the decoder reads, (R, ceil(T/2), 2); the start written
    at each pair position (R, ceil(T/2)), PAD where the inputs hold none)."""
    positions = (input_tokens.shape[1] + 1) // 2
    starts = input_tokens[:, 1::2]  # one short for odd lengths
    return run_pairs(input_tokens[:, : 2 * positions - 1]), F.pad(starts, (0, positions - starts.shape[1]), value=PAD)


def last_pair(tokens: torch.Tensor, step: int) -> torch.Tensor:
    """Run-step generation's input at step ``step`` from tokens (R, 1 + 2k), as :func:`run_pairs` lays it
    out: (R, 1, 2)."""
    return run_pairs(tokens[:, :1]) if step == 0 else tokens[:, 2 * step - 1 : 2 * step + 1][:, None]
