"""Search over whole sequences under the grammar: best-of-N sampling and beam search, both ranked by the
sequences' total log-probability (optionally divided by length ** ``length_penalty``).

Both run the N candidates of every image as rows of one batch: the encoder memory and a per-image
embedding table are repeated N times (:func:`repeat_candidates`), so the KV cache and the grammar hold
B * N rows and a step costs one decoder call, not N. The log-probabilities are those of
:class:`~rleseg.models.generate.Generation` (temperature 1, renormalised over the allowed tokens), so a
score does not depend on how the candidates were drawn.
"""

from __future__ import annotations

import torch

from rleseg.tokens import EOS, PAD

from .generate import Generation, allowed_tokens, copied_grammar, drop_outweighed_eos

# A beam slot that holds no hypothesis yet (all but the first of each image at the start): finite, so that
# its allowed tokens stay above the disallowed ones (-inf) and the top-k never picks a disallowed token.
EMPTY_BEAM = -1e9


def check_search(beams: int, samples: int, temperature: float, length_penalty: float) -> None:
    if beams < 1 or samples < 1:
        raise ValueError(f"beams and samples must be >= 1 (1 = off), got {beams} and {samples}")
    if beams > 1 and samples > 1:
        raise ValueError(f"beam search and best-of-N sampling exclude each other, got beams {beams}, samples {samples}")
    if beams > 1 and temperature != 0:
        raise ValueError(f"beam search is deterministic: temperature must be 0 with beams > 1, got {temperature}")
    if samples > 1 and temperature == 0:
        raise ValueError(f"best-of-N sampling needs temperature > 0 (greedy draws N equal ones), got {temperature}")
    if length_penalty < 0:
        raise ValueError(f"length_penalty must be >= 0 (0 = total log-probability), got {length_penalty}")


def repeat_candidates(memory: torch.Tensor, table: torch.Tensor, copies: int) -> tuple[torch.Tensor, torch.Tensor]:
    """memory (B, N, D) and the embedding table, (V, D) shared or (B, V, D) per image -> each image's rows
    repeated ``copies`` times in place: (B * copies, ...), candidates of one image adjacent."""
    table = table if table.ndim == 2 else table.repeat_interleave(copies, dim=0)
    return memory.repeat_interleave(copies, dim=0), table


def sequence_lengths(tokens: torch.Tensor) -> torch.Tensor:
    """tokens (R, T) -> (R,) int64, tokens up to and including the first EOS (T where there is none)."""
    is_eos = tokens == EOS
    first = is_eos.int().argmax(dim=1)
    return torch.where(is_eos.any(dim=1), first + 1, torch.full_like(first, tokens.shape[1]))


def ranking_score(total_logprob: torch.Tensor, length: torch.Tensor, length_penalty: float) -> torch.Tensor:
    """What candidates are ranked by: total log-probability / length ** length_penalty (0: the total)."""
    if length_penalty == 0:
        return total_logprob
    return total_logprob / length.clamp(min=1).to(total_logprob.dtype) ** length_penalty


def best_of(generation: Generation, copies: int, length_penalty: float = 0.0) -> Generation:
    """A generation of B * copies rows (each image's candidates adjacent) -> B rows: per image the candidate
    of the highest :func:`ranking_score`, its tokens cut to the longest kept sequence."""
    lengths = sequence_lengths(generation.tokens)
    score = ranking_score(generation.logprobs.sum(dim=1), lengths, length_penalty).view(-1, copies)  # (B, copies)
    pick = score.argmax(dim=1) + torch.arange(score.shape[0]) * copies  # (B,) rows
    width = int(lengths[pick].max()) if len(pick) else 0
    return Generation(generation.tokens[pick, :width], generation.logprobs[pick, :width], generation.truncated[pick])


def beam_search(model, memory: torch.Tensor, table: torch.Tensor, beams: int, max_len: int, constrained: bool = True,
                use_cache: bool = True, eos_by_mass: bool = False, length_penalty: float = 0.0) -> Generation:
    """Beam search of width ``beams`` for the token model ``model`` (a :class:`~rleseg.models.Pix2Seq`, in
    eval mode), from memory and table already repeated per beam (:func:`repeat_candidates`: B * beams rows).
    Returns per image the best of its final beams (:func:`best_of`), B rows."""
    final = beam_candidates(model, memory, table, beams, max_len, constrained, use_cache, eos_by_mass, length_penalty)
    return best_of(final, beams, length_penalty)


def beam_candidates(model, memory: torch.Tensor, table: torch.Tensor, beams: int, max_len: int,
                    constrained: bool = True, use_cache: bool = True, eos_by_mass: bool = False,
                    length_penalty: float = 0.0) -> Generation:
    """The final beams of :func:`beam_search`, B * beams rows (each image's adjacent, best first).

    Each step extends every hypothesis by every allowed token and keeps, per image, the ``beams`` best by
    :func:`ranking_score`; a finished hypothesis (after its EOS) stays as a candidate of unchanged score,
    so it competes with the longer ones until the end. The beams still live when the search stops early
    (see the loop) are returned cut there, without EOS."""
    rows, device = memory.shape[0], memory.device
    batch = rows // beams
    cache = model.decoder.new_cache(memory, max_len) if use_cache else None
    grammar = copied_grammar(model.tokenizer, rows, beams) if constrained else None
    tokens = torch.full((rows, max_len + 1), PAD, dtype=torch.long, device=device)  # BOS + generated
    tokens[:, 0] = model.first_tokens(rows, beams, device)
    logprobs = torch.zeros(rows, max_len, device=device)
    score = torch.full((batch, beams), EMPTY_BEAM, device=device)
    score[:, 0] = 0.0
    score = score.flatten()  # (R,) total log-probability of each hypothesis
    lengths = torch.zeros(rows, dtype=torch.long, device=device)
    done = torch.zeros(rows, dtype=torch.bool, device=device)
    offsets = torch.arange(batch, device=device)[:, None] * beams  # (B, 1) first row of each image
    for step in range(max_len):
        logits = model.next_logits(tokens, step, memory, table, cache)  # (R, V)
        vocab_size = logits.shape[-1]
        allowed = allowed_tokens(grammar, done, vocab_size, max_len - step)
        if eos_by_mass:
            allowed = drop_outweighed_eos(logits, allowed)
        step_logprobs = torch.log_softmax(logits.masked_fill(~allowed, float("-inf")), dim=-1)  # done rows: PAD 0
        total = score[:, None] + step_logprobs  # (R, V)
        new_lengths = torch.where(done, lengths, step + 1)
        rank = ranking_score(total, new_lengths[:, None], length_penalty)
        top = rank.view(batch, beams * vocab_size).topk(beams, dim=1).indices  # (B, beams), best first
        parent = (top // vocab_size + offsets).flatten()  # (R,) the row each kept hypothesis extends
        next_token = (top % vocab_size).flatten()
        score = total[parent, next_token]
        tokens, logprobs, done, lengths = tokens[parent], logprobs[parent], done[parent], new_lengths[parent]
        tokens[:, step + 1] = next_token
        logprobs[:, step] = step_logprobs[parent, next_token].masked_fill(done, 0.0)
        if cache is not None:  # positions 0 .. step are filled; the rest is overwritten before it is read
            for layer in cache.layers:
                layer.k[:, :, : step + 1] = layer.k[parent, :, : step + 1]
                layer.v[:, :, : step + 1] = layer.v[parent, :, : step + 1]
        if grammar is not None:
            grammar.select(parent.cpu().numpy())
            grammar.advance(next_token.cpu().numpy())
        done |= next_token == EOS
        # Without a length penalty a hypothesis only loses score as it grows: once every image's best beam
        # (the first, topk sorts) has finished, no live one can overtake it.
        if bool(done.all()) or (length_penalty == 0 and bool(done.view(batch, beams)[:, 0].all())):
            break
    steps = step + 1
    truncated = None if grammar is None else torch.from_numpy(grammar.truncated)
    return Generation(tokens[:, 1 : steps + 1].cpu(), logprobs[:, :steps].cpu(), truncated)
