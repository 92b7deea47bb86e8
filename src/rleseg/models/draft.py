"""Exact draft-and-verify greedy decoding: a mask in a few decoder passes, token for token the greedy output.

A draft is a label map on the mask grid (the per-cell head's, pyramid.py :class:`CellHead`). Each pass
proposes, for every sequence, the runs of its draft from where the sequence stands (its next run's first
free cell, or the run it is writing), in the model's own tokens (:func:`continuation`). The grammar is
replayed over the proposals (:func:`replay`: the tokens allowed after every proposed prefix); one
teacher-forced decoder pass over the last token and the K proposed ones (through the KV cache, each row at
its own position) gives the model's own greedy choice under the grammar at every one of those positions.
The proposed tokens are taken while they are that choice, then the model's own token where they first
differ (or after the last one); each row's grammar goes back to its state after the tokens taken
(:func:`restore`) and takes its own token. So every token is the one
step-by-step greedy decoding would write, with the same log-probability; only the number of decoder passes
changes (``Generation.passes``).

Shapes: R = rows still decoding, K = tokens proposed in a pass, V = vocabulary.
"""

from __future__ import annotations

import copy

import numpy as np
import torch
import torch.nn.functional as F

from rleseg.tokens import EOS, PAD, MaskTokenizer

from .generate import DecodingOptions, Generation

# Tokens proposed per row and pass at most. More cut passes (stardist at 1,000 steps, 32 patches: 672 at 4, 456 at
# 8, 360 at 16) but the decoder reads K + 1 positions a pass: 8 was the fastest on the dev CPU (docs/results.md).
MAX_DRAFT = 8
REACH = 3  # a run the sequence starts this many cells or fewer before the draft's next one continues as that run


def continuation(tokenizer: MaskTokenizer, draft: np.ndarray, cell: int, written: int, chose_end: bool = True
                 ) -> np.ndarray:
    """The tokens that continue a sequence from the runs of ``draft`` (h, w): with ``written`` 0, its runs
    from cell ``cell`` (flat, in scan order) on; with ``written`` > 0, the rest of the run the sequence
    writes from ``cell`` (its first ``written`` tokens are written) and the runs after it. EOS last.

    Where the sequence and the draft disagree on a boundary, the draft is read as the sequence now stands:
    a sequence whose last run ended by its choice (``chose_end``; not cut at ``max_run``) where the draft's
    run goes on skips the rest of that run, and a run that the sequence starts up to ``REACH`` cells before
    the draft's next one takes that run's class from there (further away: no proposal, empty)."""
    flat = draft.ravel(order=tokenizer.order).copy()
    if chose_end and 0 < cell < flat.size and not written and flat[cell] and flat[cell] == flat[cell - 1]:
        other = np.flatnonzero(flat[cell:] != flat[cell])
        flat[cell : cell + (other[0] if other.size else flat.size)] = 0
    if written:
        ahead = np.flatnonzero(flat[cell : cell + REACH])
        if not ahead.size:
            return np.zeros(0, np.int64)
        flat[cell : cell + ahead[0]] = flat[cell + ahead[0]]
    flat[:cell] = 0
    return tokenizer.encode(flat.reshape(draft.shape, order=tokenizer.order))[written:]


def proposals(tokenizer: MaskTokenizer, drafts: np.ndarray, grammar, room: np.ndarray
              ) -> tuple[torch.Tensor, np.ndarray]:
    """Each row's proposal from its draft (R, h, w) and grammar state, at most ``room`` (R,) tokens ->
    ((R, K) int64 padded with PAD, (R,) lengths). A proposal stops where the pass's own last token ends a
    run, so that the next pass starts at a run boundary, where a draft is read best."""
    fmt = grammar.run_format
    per_run, two_d = fmt.tokens_per_run, fmt.slots[0] == "coord"
    rows = []
    for draft, slot, start, free, limit in zip(drafts, grammar.slot, grammar.start, grammar.free, room, strict=True):
        if limit <= 0 or (two_d and slot == 1):  # no room, or a 2-D start half written: its cell is not known yet
            rows.append(np.zeros(0, np.int64))
            continue
        chose_end = free - start < fmt.max_run  # a run cut at max_run goes on in the next one
        tokens = continuation(tokenizer, draft, int(start) if slot else int(free), int(slot), bool(chose_end))
        whole = min(int(limit), MAX_DRAFT)
        whole -= (slot + whole + 1) % per_run  # the pass's own token then closes a run
        rows.append(tokens[: max(whole, 0)] if len(tokens) > whole else tokens)
    lengths = np.array([len(r) for r in rows], np.int64)
    out = np.full((len(rows), int(lengths.max(initial=0))), PAD, np.int64)
    for i, r in enumerate(rows):
        out[i, : len(r)] = r
    return torch.from_numpy(out), lengths


def replay(grammar, proposed: np.ndarray, lengths: np.ndarray, remaining: np.ndarray
           ) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Feed the proposals (R, K) to ``grammar`` (lengths (R,); ``remaining`` (R,) tokens of budget) ->
    ((R, K + 1, V) the tokens allowed after each proposed prefix, {name: (K + 1, R) the grammar's row state
    there}). A row past its proposal keeps its state (its outputs there are not read). The states are
    gathered first and the allowed tokens computed once for all of them: one call instead of K + 1."""
    steps = proposed.shape[1] + 1
    states = {name: [] for name in grammar.row_state}
    for i in range(steps):
        grammar.check_budget(remaining - i)  # an EOS the budget forces is a truncation
        for name, kept in states.items():
            kept.append(getattr(grammar, name).copy())
        if i < steps - 1:
            grammar.advance(proposed[:, i], rows=i < lengths)
    states = {name: np.stack(kept) for name, kept in states.items()}
    every = copy.copy(grammar)  # the grammar at each proposed prefix of each row, flat: (K + 1) * R rows
    for name, values in states.items():
        setattr(every, name, values.reshape(-1))
    allowed = every.allowed((remaining[None] - np.arange(steps)[:, None]).reshape(-1))
    return allowed.reshape(steps, len(proposed), -1).swapaxes(0, 1), states


def restore(grammar, states: dict[str, np.ndarray], taken: np.ndarray) -> None:
    """Each row of ``grammar`` back to its state after ``taken`` (R,) of its proposed tokens."""
    rows = np.arange(len(taken))
    for name, values in states.items():
        setattr(grammar, name, values[taken, rows])


def agreed(own: torch.Tensor, proposed: torch.Tensor, lengths: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's choices (R, K + 1) after each proposed prefix, the proposals (R, K) and their lengths (R,)
    -> ((R,) how many proposed tokens the model takes: the longest prefix it agrees with; (R,) bool, whether
    those end in EOS, after which it takes nothing more)."""
    kept = (own[:, :-1] == proposed) & (torch.arange(proposed.shape[1], device=own.device) < lengths[:, None])
    taken = kept.long().cumprod(1).sum(1)
    last = F.pad(proposed, (1, 0), value=PAD).gather(1, taken[:, None])[:, 0]  # PAD where none is taken
    return taken, last == EOS


def verify(model, encoded, drafts: np.ndarray, options: DecodingOptions) -> Generation:
    """Greedy decoding under the grammar of ``model`` (a one-sequence-per-image token model) over its
    :class:`~rleseg.models.pix2seq.Encoded` images, drafted by ``drafts`` (B, h, w) label maps on the mask
    grid; see the module doc. Any draft gives the same tokens; a good one, fewer passes."""
    tokenizer, max_len = model.tokenizer, options.length_for(model.config.max_seq_len)
    batch, device = len(encoded.memory), encoded.memory.device
    grammar = tokenizer.grammar(batch)
    cache = model.new_cache(encoded, max_len + MAX_DRAFT + 1)  # short drafts pad past max_len: never read
    tokens = torch.full((batch, max_len + 1), PAD, dtype=torch.long, device=device)  # first + generated
    tokens[:, 0] = model.first_tokens(batch, device)
    logprobs = torch.zeros(batch, max_len, device=device)
    written = torch.zeros(batch, dtype=torch.long, device=device)
    passes = torch.zeros(batch, dtype=torch.long)
    truncated = torch.zeros(batch, dtype=torch.bool)
    live = torch.arange(batch, device=device)  # the rows encoded, cache and grammar hold
    active = torch.ones(batch, dtype=torch.bool, device=device)  # of those, the rows still writing
    while bool(active.any()):
        at = written[live]
        room = torch.where(active, max_len - 1 - at, 0)
        proposed, lengths = proposals(tokenizer, drafts[live.cpu().numpy()], grammar, room.cpu().numpy())
        allowed, states_at = replay(grammar, proposed.numpy(), lengths, (max_len - at).cpu().numpy())
        proposed = proposed.to(device)
        logits = model.window_logits(torch.cat([tokens[live, at][:, None], proposed], 1), at, encoded, cache)
        chosen = logits.masked_fill(~torch.from_numpy(allowed).to(device), float("-inf"))
        own = chosen.argmax(-1)  # (R, K + 1): the model's greedy choice after each proposed prefix
        taken, ended = agreed(own, proposed, torch.from_numpy(lengths).to(device))
        ended |= ~active  # rows that finished write nothing more
        count = taken + (~ended).long()  # the model's own token after them, unless they ended in EOS
        lp = torch.log_softmax(chosen, -1).gather(2, own[..., None])[..., 0]  # (R, K + 1)
        column = torch.arange(own.shape[1], device=device)
        write = column < count[:, None]  # (R, K + 1)
        rows = live[:, None].expand_as(own)[write]
        places = (at[:, None] + column)[write]
        tokens[rows, places + 1], logprobs[rows, places] = own[write], lp[write]
        restore(grammar, states_at, taken.cpu().numpy())
        mine = own.gather(1, taken[:, None])[:, 0]  # the model's own token after the proposed ones it took
        grammar.advance(mine.cpu().numpy(), rows=(~ended).cpu().numpy())
        written[live] += count
        passes[live[active].cpu()] += 1
        active = ~torch.from_numpy(grammar.done).to(device) & (written[live] < max_len)
        if 4 * int((~active).sum()) >= len(live):  # as step by step: rows leave once they are a quarter
            truncated[live.cpu()] = torch.from_numpy(grammar.truncated)
            keep = active.nonzero().squeeze(1)
            grammar.select(keep.cpu().numpy())
            live, active, encoded, cache = live[keep], active[keep], encoded.select(keep), cache.select(keep)
    truncated[live.cpu()] = torch.from_numpy(grammar.truncated)
    width = int(written.max())
    return Generation(tokens[:, 1 : width + 1].cpu(), logprobs[:, :width].cpu(), truncated, passes)
