"""Generation speed of rleseg.models: tokens/s and images/s, with/without KV cache and grammar constraints.

    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_generate.py --threads 1   # docs/benchmarks.md (~11 min)
    HF_HUB_OFFLINE=1 .venv/bin/python benchmarks/bench_generate.py --quick       # a smoke run

On a CPU shared with other jobs use ``--threads 1``: torch's OpenMP threads wait on each other, and a
call slowed by up to 100x whenever another process took one of the two cores.

Models are random-init (speed does not depend on the weights). The tokenizer is the paper's IPSC setting:
80x80 masks, 3 classes, LAC, 1-D starts (vocabulary 6565). Sampling: temperature 1, top-p 0.4 (paper).

Forcing the sequence length (benchmark only): a random model would stop early (EOS, or constrained
starts that jump to the end of the mask), so the output bias is rewritten: EOS gets -1e4 (never chosen
unless the grammar forces it), and start and LAC tokens get a bias falling by 1 per value, so sampled runs
start right after the previous one and are short; the mask then holds thousands of runs and every
sequence runs to ``max_len`` (with constraints the last run + EOS fill the end). Only the logits change,
not the work per step. Each timing is the whole ``model.generate`` call (encoder included; the encoder's
own time is listed separately), best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import numpy as np
import torch

from rleseg.models import create_model
from rleseg.tokens import EOS, Tokenizer


def force_long_sequences(model) -> None:
    vocab = model.tokenizer.vocab
    with torch.no_grad():
        bias = model.decoder.output_bias
        bias.zero_()
        bias[EOS] = -1e4
        for name in ("start", "lac"):
            span = vocab[name]
            bias[span.first : span.stop] = -torch.arange(span.size, dtype=torch.float32)


def timed(fn, repeat: int) -> tuple[float, object]:
    best, out = float("inf"), None
    for _ in range(repeat):
        start = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - start)
    return best, out


def grammar_time(tokenizer, tokens: np.ndarray, max_len: int) -> float:
    """Seconds spent in the grammar alone (allowed + advance) replaying the generated tokens."""
    grammar = tokenizer.grammar(len(tokens))
    start = time.perf_counter()
    for step in range(tokens.shape[1]):
        grammar.allowed(max_len - step)
        grammar.advance(tokens[:, step])
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="small config, short sequences only")
    parser.add_argument("--repeat", type=int, default=3, help="best of this many runs (uncached: at most 2)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    tokenizer = Tokenizer((80, 80), num_classes=3, scheme="lac")
    # preset -> (image size, [(batch, length, uncached too?)]). Recomputing the prefix costs O(T^2), so
    # uncached runs are limited to batch 1 up to 512 tokens and batch 8 at 128 (small preset only), to keep
    # the whole run near 10 minutes on 2 CPU cores.
    if args.quick:
        grid = {"small": (256, [(1, 128, True)])}
    else:
        grid = {
            "small": (256, [(1, 128, True), (1, 512, True), (1, 1024, False),
                            (8, 128, True), (8, 512, False), (8, 1024, False)]),
            "paper": (640, [(1, 128, True), (1, 512, True), (1, 1024, False), (8, 128, False), (8, 512, False)]),
        }
    print(f"# {platform.processor() or platform.machine()}, torch {torch.__version__}, threads {args.threads}")
    print(f"# load average before: {os.getloadavg()}")
    print("| config | batch | tokens | cache | constrained | s/call | tokens/s | images/s | grammar share |")
    print("|---|---|---|---|---|---|---|---|---|")
    summary = []
    for preset, (size, runs) in grid.items():
        model = create_model(preset, tokenizer).eval()
        force_long_sequences(model)
        for batch, length, uncached in runs:
            if length > model.config.max_seq_len:  # the presets' learned positions stop at max_seq_len
                model = _longer(model, tokenizer, length)
            images = torch.rand(batch, 3, size, size)
            model.generate(images, max_len=8)  # warm-up: first calls pay for allocations and kernel choice
            encode_s, _ = timed(lambda images=images, model=model: model.encoder(images), 2)
            variants = [(c, k) for c in ((True, False) if uncached else (True,)) for k in (True, False)]
            best = dict.fromkeys(variants, float("inf"))
            outs = {}
            # Variants interleave, so a burst of load from other processes hits them alike.
            for r in range(args.repeat):
                for cache, constrained in variants:
                    if not cache and r >= 2:
                        continue
                    gen = torch.Generator().manual_seed(0)
                    start = time.perf_counter()
                    outs[cache, constrained] = model.generate(
                        images, max_len=length, temperature=1.0, top_p=0.4, constrained=constrained, use_cache=cache,
                        generator=gen
                    )
                    best[cache, constrained] = min(best[cache, constrained], time.perf_counter() - start)
            for (cache, constrained), seconds in best.items():
                out = outs[cache, constrained]
                produced = int((out.tokens != 0).sum())
                share = ""
                if constrained:
                    share = f"{grammar_time(tokenizer, out.tokens.numpy(), length) / seconds:.1%}"
                print(
                    f"| {preset} {size}px | {batch} | {out.tokens.shape[1]} | {'yes' if cache else 'no'} | "
                    f"{'yes' if constrained else 'no'} | {seconds:.2f} | {produced / seconds:.0f} | "
                    f"{batch / seconds:.2f} | {share} |",
                    flush=True,
                )
            line = (f"{preset} b{batch} T{length}: encoder {encode_s:.2f} s; constraints cost "
                    f"{best[True, True] / best[True, False] - 1:+.1%} (cached)")
            if uncached:
                line += (f"; cache speedup {best[False, True] / best[True, True]:.1f}x constrained, "
                         f"{best[False, False] / best[True, False]:.1f}x unconstrained")
            summary.append(line)
    print("\n".join(f"# {line}" for line in summary))
    print(f"# load average after: {os.getloadavg()}")


def _longer(model, tokenizer, length):
    """The same preset with learned positions up to ``length`` (copying the weights that exist)."""
    from dataclasses import replace

    from rleseg.models import ModelConfig, Pix2Seq

    config = replace(model.config, max_seq_len=length)
    assert isinstance(config, ModelConfig)
    longer = Pix2Seq(config, tokenizer).eval()
    state = model.state_dict()
    state["decoder.pos_embedding"] = torch.cat(
        [state["decoder.pos_embedding"], longer.decoder.pos_embedding.detach()[model.config.max_seq_len :]]
    )
    longer.load_state_dict(state)
    return longer


if __name__ == "__main__":
    main()
