"""Token-by-token generation (:func:`sample`), what it returns, and how one next token is chosen from a
batch of logits: which tokens are allowed, EOS by probability mass, and sampling (greedy, temperature,
top-k, top-p)."""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np
import torch

from rleseg.tokens import EOS, PAD, Grammar, MaskTokenizer

# Scoring only the grammar's candidates (Decoder.scores) gathers rows of the table each step: a few more
# operations, which pay from about this many table elements on (a (B, V, D) float32 table of 4 MB, 4 rows
# of the tiny models on the dev CPU: 1.07-1.35x a step there; at 1-2 rows 0.9x; docs/benchmarks.md).
CACHED_TABLE = 2**20


@dataclass
class Generation:
    """The output of ``model.generate``; all tensors on the CPU.

    tokens: (B, T) int64, the generated tokens after BOS (BOS itself excluded); each row is the body,
        its EOS, then PAD (0) up to T = the longest sequence of the batch. An unconstrained row may lack
        EOS if it ran into ``max_len``.
    logprobs: (B, T) float32, log-probability of each chosen token under the model's distribution at
        temperature 1 restricted to the allowed tokens (renormalised over the grammar's tokens when
        constrained; the full softmax otherwise). Temperature, top-k and top-p shape the sampling but not
        this number, so it is comparable across sampling settings and usable as a score (e.g. an
        instance's class-token probability). 0.0 at the PAD positions after EOS.
    truncated: (B,) bool, the sequences that the length limit cut: an unconstrained row without EOS (the
        default, computed from ``tokens``), or a constrained row whose EOS the grammar forced because the
        steps left could not hold another run (``Grammar.truncated``).

    Masks are the caller's to decode: ``tokenizer.decode(row, errors="strict")`` for a constrained
    generation (every row is valid), ``errors="ignore"`` for an unconstrained one.
    """

    tokens: torch.Tensor
    logprobs: torch.Tensor
    truncated: torch.Tensor | None = None

    def __post_init__(self) -> None:
        if self.truncated is None:
            self.truncated = ~(self.tokens == EOS).any(dim=1)


def check_sampling(temperature: float, top_k: int, top_p: float) -> None:
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1] (1 = off), got {top_p}")


def allowed_tokens(grammar: Grammar | None, done: torch.Tensor, vocab_size: int, remaining: int) -> torch.Tensor:
    """(B, V) bool, the tokens one generation step may choose: the grammar's with ``remaining`` steps
    left (it pads finished rows itself), or without a grammar anything for the rows not ``done`` (B,)
    and only PAD for those that are."""
    if grammar is not None:
        return torch.from_numpy(grammar.allowed(remaining)).to(done.device)
    allowed = torch.ones(done.shape[0], vocab_size, dtype=torch.bool, device=done.device)
    allowed[done] = False
    allowed[done, PAD] = True
    return allowed


def drop_outweighed_eos(logits: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """allowed (B, V) without EOS in the rows where other tokens are allowed and EOS holds less than half
    of the allowed probability of logits (B, V): EOS by mass, not by being the single likeliest token."""
    probs = torch.softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)
    outweighed = allowed[:, EOS] & (probs[:, EOS] < 0.5) & (allowed.sum(dim=-1) > 1)
    allowed = allowed.clone()
    allowed[:, EOS] &= ~outweighed
    return allowed


def choose_next(
    logits: torch.Tensor,
    grammar: Grammar | None,
    ended: torch.Tensor,
    remaining: int,
    temperature: float,
    top_k: int,
    top_p: float,
    eos_by_mass: bool,
    generator: torch.Generator | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One generation choice for a batch: logits (B, V) float and the rows that ``ended`` (B,) before it,
    ``remaining`` tokens of budget -> (next (B,), logprob (B,)) as :func:`sample_next`, fed to the
    ``grammar`` when there is one."""
    allowed = allowed_tokens(grammar, ended, logits.shape[-1], remaining)
    if eos_by_mass:
        allowed = drop_outweighed_eos(logits, allowed)
    next_token, logprob = sample_next(logits, allowed, temperature, top_k, top_p, generator)
    if grammar is not None:
        grammar.advance(next_token.cpu().numpy())
    return next_token, logprob


def sample_next(
    logits: torch.Tensor,
    allowed: torch.Tensor,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """logits (B, V) float, allowed (B, V) bool with at least one True per row -> (next (B,) int64,
    logprob (B,) float32 of it under log_softmax of the allowed logits).

    top-k keeps the k most probable tokens (renormalised); top-p then keeps the most probable tokens
    until their mass reaches p (the first always), as in the usual logits warpers.
    """
    logits = logits.masked_fill(~allowed, float("-inf"))
    logprobs = torch.log_softmax(logits, dim=-1)  # (B, V)
    if temperature == 0:
        next_token = logits.argmax(dim=-1)
    else:
        probs = torch.softmax(logits / temperature, dim=-1)  # (B, V)
        if top_k == 0 and top_p >= 1.0:
            next_token = torch.multinomial(probs, 1, generator=generator).squeeze(1)
        else:
            next_token = _sample_top(probs, top_k, top_p, generator)
    return next_token, logprobs.gather(1, next_token[:, None]).squeeze(1)


def _sample_top(probs: torch.Tensor, top_k: int, top_p: float, generator) -> torch.Tensor:
    """Sample from the top-k / nucleus of probs (B, V). The candidates come from topk, grown until they
    hold the nucleus of every row: a trained model's nucleus is small, and this avoids sorting all V
    tokens (the sort dominated a decoding step of the small model)."""
    vocab_size = probs.shape[-1]
    k = min(top_k or 64, vocab_size)
    while True:
        top, index = probs.topk(k, dim=-1)  # (B, k), descending
        if top_k:
            top = top / top.sum(dim=-1, keepdim=True)
        if top_k or k == vocab_size or bool((top.sum(dim=-1) >= top_p).all()):
            break
        k = min(4 * k, vocab_size)
    if top_p < 1.0:
        mass_before = top.cumsum(dim=-1) - top
        top = top.masked_fill(mass_before >= top_p, 0.0)
    choice = torch.multinomial(top, 1, generator=generator)  # (B, 1), zero-probability entries never drawn
    return index.gather(1, choice).squeeze(1)


def sample(
    model, memory: torch.Tensor, table: torch.Tensor, max_len: int, temperature: float, top_k: int, top_p: float,
    constrained: bool, use_cache: bool, generator: torch.Generator | None, eos_by_mass: bool, copies: int = 1,
) -> Generation:
    """Token-by-token generation by a :class:`~rleseg.models.pix2seq.Pix2Seq` ``model`` from its encode()'s
    memory and table, one sequence per row (see ``Pix2Seq.generate``); ``copies``: adjacent rows that decode
    the same sequence (best-of-N). With ``run_step`` a step writes a run's start (or EOS) and its end."""
    per_step = 2 if model.config.run_step else 1
    steps = -(-max_len // per_step)
    cache = model.decoder.new_cache(memory, steps) if use_cache else None
    batch, device = memory.shape[0], memory.device
    grammar = copied_grammar(model.tokenizer, batch, copies) if constrained else None
    choose = functools.partial(choose_next, grammar=grammar, temperature=temperature, top_k=top_k, top_p=top_p,
                               eos_by_mass=eos_by_mass, generator=generator)
    tokens = torch.full((batch, steps * per_step + 1), PAD, dtype=torch.long, device=device)  # first + generated
    tokens[:, 0] = model.first_tokens(batch, copies, device)
    logprobs = torch.zeros(batch, steps * per_step, device=device)
    done = torch.zeros(batch, dtype=torch.bool, device=device)
    truncated = torch.zeros(batch, dtype=torch.bool)
    # The rows still generating, as memory, table, cache and grammar hold them: a step costs per row,
    # so the rows that ended leave once they are a quarter of those left.
    live = torch.arange(batch, device=device)
    for step in range(steps):
        column = step * per_step  # tokens[:, column] is the last one the decoder reads at this step
        x = model.next_states(tokens[live], step, memory, table, cache)  # (R, 1, D)
        ended = done[live]
        logits = model.decoder.logits(x, table, columns=candidates(grammar, table))
        token, logprob = choose(logits[:, -1].float(), ended=ended, remaining=max_len - column)
        tokens[live, column + 1], logprobs[live, column] = token, logprob.masked_fill(ended, 0.0)
        ended = ended | (token == EOS)
        if per_step == 2:
            logits = model.decoder.end_logits(x, token[:, None], table, columns=candidates(grammar, table))
            end, logprob = choose(logits[:, -1].float(), ended=ended, remaining=max_len - column - 1)
            tokens[live, column + 2], logprobs[live, column + 1] = end, logprob.masked_fill(ended, 0.0)
        done[live] = ended
        if bool(ended.all()):
            break
        if 4 * int(ended.sum()) >= len(live):
            keep = (~ended).nonzero().squeeze(1)
            if grammar is not None:  # the rows that leave keep their flags here
                truncated[live.cpu()] = torch.from_numpy(grammar.truncated)
                grammar.select(keep.cpu().numpy())
            live, memory, cache = live[keep], memory[keep], None if cache is None else cache.select(keep)
            table = table if table.ndim == 2 else table[keep]
    written = min((step + 1) * per_step, max_len)  # the last step ran, whether every row ended or not
    if grammar is None:
        truncated = None  # Generation takes the rows without EOS
    else:
        truncated[live.cpu()] = torch.from_numpy(grammar.truncated)
    return Generation(tokens[:, 1 : written + 1].cpu(), logprobs[:, :written].cpu(), truncated)


def candidates(grammar, table: torch.Tensor) -> tuple | None:
    """The grammar's candidates() once the table holds more than ``CACHED_TABLE`` elements (scoring only them
    then pays), else None: score every token."""
    return None if grammar is None or table.numel() <= CACHED_TABLE else grammar.candidates()


def copied_grammar(tokenizer: MaskTokenizer, rows: int, copies: int) -> Grammar:
    """The grammar of ``rows`` decoding rows holding ``copies`` adjacent copies of each sequence (beam search,
    best-of-N): built for the sequences, then each of its rows repeated, so that a grammar that reads a
    row's place (row r of band sequences writes band r % bands) reads the sequence's."""
    grammar = tokenizer.grammar(rows // copies)
    if copies > 1:
        grammar.select(np.arange(rows // copies).repeat(copies))
    return grammar
