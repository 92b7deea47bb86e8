"""Token-by-token generation (:func:`sample`): its options (:class:`DecodingOptions`), what it returns
(:class:`Generation`), and how one next token is chosen from a batch of logits: which tokens the grammar
allows, and sampling (greedy, temperature, top-k, top-p)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Literal

import torch

from rleseg.tokens import EOS, PAD, Grammar
from rleseg.typed_yaml import check_range

# Scoring only the grammar's candidates (Decoder.scores) gathers rows of the table each step: a few more
# operations, which pay from about this many table elements on (a (B, V, D) float32 table of 4 MB, 4 rows
# of the tiny models on the dev CPU: 1.07-1.35x a step there; at 1-2 rows 0.9x; docs/benchmarks.md).
CACHED_TABLE = 2**20
# The share of DecodingOptions.earliest_instance a panoptic model decodes with unless told otherwise: PQ +0.02 to
# +0.05 on Hela in 6 of 6 checkpoints, -0.05 to +0.09 on the nuclei (30 objects; 3 of 5 gained) (docs/results.md).
EARLIEST_INSTANCE = 0.5


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
    passes: torch.Tensor | None = None  # (B,) int64, the decoder passes each sequence took

    def __post_init__(self) -> None:
        if self.truncated is None:
            self.truncated = ~(self.tokens == EOS).any(dim=1)
        if self.passes is None:  # a pass per token, up to EOS
            self.passes = (self.tokens != PAD).sum(dim=1)


@dataclass
class DecodingOptions:
    """How a model's output becomes tokens and label maps, in the spirit of Hugging Face's
    ``GenerationConfig``: declared once, held by ``InferenceOptions`` (predict, evaluate), the ``eval``
    section of a config (in-training validation) and the command line's flags."""

    temperature: float = 0.0  # 0 = greedy; the paper samples at 1.0 with top_p 0.4
    top_k: int = 0  # sample among the k likeliest tokens; 0 = off
    top_p: float = 1.0  # nucleus sampling; 1 = off
    constrained: bool = True  # only tokens the tokenizer's grammar allows: every sequence decodes strictly
    max_len: int | None = None  # tokens generated at most per sequence; None = the model's max_seq_len
    use_cache: bool = True  # the decoder's key-value cache: changes the speed, never a token
    # "draft": greedy decoding under the grammar verifies the per-cell head's draft of the mask, several tokens a
    # decoder pass (models/draft.py), where the model has that head (model.aux_dense_weight > 0); else, and for
    # sampling, it is step by step. "stepwise": one decoder pass per token (per run with model.run_step). The
    # same tokens either way; drafting takes a fifth to a third of the passes (docs/results.md).
    method: Literal["stepwise", "draft"] = "draft"
    # Panoptic models, greedy: at each group opening take the earliest start (scan order) whose probability is
    # at least this share of the likeliest token's (EOS included), not the likeliest. Instances are written in
    # scan order of their first cell, so a start later than an instance's skips that instance for good, the
    # token model's most frequent error (docs/results.md, instances). 0 = plain greedy; None = 0.5
    # (EARLIEST_INSTANCE) for greedy, constrained decoding of a panoptic model, else 0 (resolve_earliest_instance).
    earliest_instance: float | None = None
    # Models with a refiner (model.refine_band > 0): redraw the decoded mask's boundary band at full
    # resolution; false gives the token-only mask (upsampled nearest), to compare both on one checkpoint.
    refine: bool = True

    def __post_init__(self) -> None:
        check_range(self, 0, None, "temperature", "top_k")
        check_range(self, 0, 1, "top_p", low_open=True)
        check_range(self, 0, 1, "earliest_instance")
        check_range(self, 1, None, "max_len")
        if self.method not in ("draft", "stepwise"):
            raise ValueError(f"method must be 'draft' or 'stepwise', got {self.method!r}")

    def length_for(self, max_seq_len: int) -> int:
        """The tokens a sequence may take at most: ``max_len``, within 1 .. ``max_seq_len`` (ValueError above)."""
        if self.max_len is None:
            return max_seq_len
        if self.max_len > max_seq_len:
            raise ValueError(f"max_len must be in 1 .. max_seq_len = {max_seq_len}, got {self.max_len}")
        return self.max_len


def resolve_earliest_instance(options: DecodingOptions, task: str) -> DecodingOptions:
    """``options`` with ``earliest_instance`` a number for a tokenizer of ``task``: None becomes
    EARLIEST_INSTANCE for greedy, constrained decoding of a panoptic model and 0 otherwise; a share for anything
    else is a ValueError."""
    fits = task == "panoptic" and options.temperature == 0 and options.constrained
    if options.earliest_instance is None:
        return dataclasses.replace(options, earliest_instance=EARLIEST_INSTANCE if fits else 0.0)
    if options.earliest_instance and not fits:
        raise ValueError("earliest_instance is for greedy, constrained decoding of panoptic models")
    return options


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


def choose_next(logits: torch.Tensor, grammar: Grammar | None, ended: torch.Tensor, remaining: int,
                options: DecodingOptions, generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    """One generation choice for a batch: logits (B, V) float and the rows that ``ended`` (B,) before it,
    ``remaining`` tokens of budget -> (next (B,), logprob (B,)) as :func:`sample_next`, fed to the
    ``grammar`` when there is one."""
    allowed = allowed_tokens(grammar, ended, logits.shape[-1], remaining)
    o = options
    next_token, logprob = sample_next(logits, allowed, o.temperature, o.top_k, o.top_p, generator)
    if o.earliest_instance:
        earliest = earliest_openings(logits, allowed, grammar, o.earliest_instance, next_token)
        if not torch.equal(earliest, next_token):  # most steps open no group: their log-probabilities stand
            next_token = earliest
            logprob = logits.masked_fill(~allowed, float("-inf")).log_softmax(-1).gather(1, next_token[:, None])[:, 0]
    if grammar is not None:
        grammar.advance(next_token.cpu().numpy())
    return next_token, logprob


def earliest_openings(logits: torch.Tensor, allowed: torch.Tensor, grammar, share: float, chosen: torch.Tensor
                      ) -> torch.Tensor:
    """The ``chosen`` tokens (B,) where, in each row of a panoptic ``grammar`` that opens a group, the earliest
    allowed start whose probability is at least ``share`` of the likeliest allowed token's takes their place."""
    rows = torch.from_numpy(grammar.openings()).to(logits.device)
    if not bool(rows.any()):
        return chosen
    starts = grammar.run_format.vocab["start"]
    probs = logits[rows].float().masked_fill(~allowed[rows], float("-inf")).softmax(-1)
    plausible = probs[:, starts.first : starts.stop] >= share * probs.max(-1, keepdim=True).values
    earliest = starts.first + plausible.int().argmax(-1)
    has = plausible.any(-1)
    chosen = chosen.clone()
    chosen[rows.nonzero().squeeze(1)[has]] = earliest[has]
    return chosen


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


def sample(model, encoded, options: DecodingOptions, generator: torch.Generator | None = None) -> Generation:
    """Token-by-token generation by a :class:`~rleseg.models.pix2seq.Pix2Seq` ``model`` from its
    :class:`~rleseg.models.pix2seq.Encoded` images, one sequence per row of ``encoded``, through the
    model's public decoding methods. A decoder pass writes ``model.tokens_per_step`` tokens (two with one
    step per run: a start, or EOS, and its end). Rows that ended leave the batch (cache, encoded images,
    grammar) once they are a quarter of those left; neither that nor the cache changes a token."""
    max_len, per_step = options.length_for(model.config.max_seq_len), model.tokens_per_step
    steps, batch, device = -(-max_len // per_step), len(encoded.memory), encoded.memory.device
    grammar = model.tokenizer.grammar(batch) if options.constrained else None
    cache = model.new_cache(encoded, steps) if options.use_cache else None
    tokens = torch.full((batch, steps * per_step + 1), PAD, dtype=torch.long, device=device)  # first + generated
    tokens[:, 0] = model.first_tokens(batch, device)
    logprobs = torch.zeros(batch, steps * per_step, device=device)
    done, truncated = torch.zeros(batch, dtype=torch.bool, device=device), torch.zeros(batch, dtype=torch.bool)
    live = torch.arange(batch, device=device)  # the rows still generating, as encoded, cache and grammar hold them
    passes = torch.zeros(batch, dtype=torch.long)
    for step in range(steps):
        passes[live.cpu()] += (~done[live]).long().cpu()  # a decoder pass for each row that has not ended
        first = step * per_step + 1  # the column of the step's first token
        states, ended = model.next_states(tokens[live], step, encoded, cache), done[live]
        for k in range(per_step):
            logits = model.next_logits(states, tokens[live, first : first + k], encoded, candidates(grammar, encoded))
            token, logprob = choose_next(logits, grammar, ended, max_len - first - k + 1, options, generator)
            tokens[live, first + k], logprobs[live, first + k - 1] = token, logprob.masked_fill(ended, 0.0)
            ended = ended | (token == EOS)
        done[live] = ended
        if bool(ended.all()):
            break
        if 4 * int(ended.sum()) >= len(live):
            keep = (~ended).nonzero().squeeze(1)
            if grammar is not None:  # the rows that leave keep their flags here
                truncated[live.cpu()] = torch.from_numpy(grammar.truncated)
                grammar.select(keep.cpu().numpy())
            live, encoded, cache = live[keep], encoded.select(keep), None if cache is None else cache.select(keep)
    written = min((step + 1) * per_step, max_len)  # the last step ran, whether every row ended or not
    if grammar is not None:
        truncated[live.cpu()] = torch.from_numpy(grammar.truncated)
    return Generation(tokens[:, 1 : written + 1].cpu(), logprobs[:, :written].cpu(),
                      None if grammar is None else truncated, passes)  # without a grammar: the rows without EOS


def candidates(grammar: Grammar | None, encoded) -> tuple | None:
    """The grammar's candidates() once the table holds more than ``CACHED_TABLE`` elements (scoring only them
    then pays), else None: score every token."""
    return None if grammar is None or encoded.table.numel() <= CACHED_TABLE else grammar.candidates()
