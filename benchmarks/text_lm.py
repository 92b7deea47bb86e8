"""Masks as text through plain ``transformers``: a tiny image-prefixed GPT-2 fitted on the synthetic shapes, then
writing masks with and without rleseg's grammar (rleseg.llm.MaskLogitsProcessor). Prints how many texts decode
strictly and the foreground Dice of the decoded masks, both ways.

    python benchmarks/text_lm.py [--steps 400] [--batch 32] [--threads 2] [--patches 64]

Everything is built offline: the synthetic-tiny config's patches (64 px, 16x16 masks, 3 classes), a byte-level
BPE tokenizer trained on the training texts, and a GPT-2 of 2 layers x 128 wide whose first positions are the
image (a strided convolution, 8x8 cells) given as ``inputs_embeds``: the smallest vision-language model that
writes what a VLM fine-tuned on ``rleseg export-text`` records would. The point is the grammar, not the model:
on this CPU a few hundred steps give a weak model, which is where malformed text is most common.
"""

from __future__ import annotations

import argparse
import os
import platform
import time

import numpy as np
import torch
from tokenizers import Tokenizer as BPETokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from torch import nn
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessorList, PreTrainedTokenizerFast

from rleseg.experiment import build_datasets, build_tokenizer, load_config
from rleseg.export_text import class_words
from rleseg.llm import MaskLogitsProcessor
from rleseg.tokens.text import MaskText


class PrefixLM(nn.Module):
    """A GPT-2 whose first positions are the image: (B, 3, 64, 64) -> 64 cells of 8x8 pixels, as embeddings."""

    def __init__(self, vocab: int, eos: int, pad: int, width: int = 128):
        super().__init__()
        self.stem = nn.Conv2d(3, width, 8, stride=8)
        config = GPT2Config(vocab_size=vocab, n_embd=width, n_layer=2, n_head=4, n_positions=512,
                            eos_token_id=eos, pad_token_id=pad, bos_token_id=eos)
        self.lm = GPT2LMHeadModel(config)

    def prefix(self, images: torch.Tensor) -> torch.Tensor:
        return self.stem(images).flatten(2).transpose(1, 2)  # (B, 64, width)

    def loss(self, images: torch.Tensor, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        prefix = self.prefix(images)
        embeds = torch.cat([prefix, self.lm.transformer.wte(ids)], dim=1)
        attention = torch.cat([torch.ones(prefix.shape[:2], dtype=mask.dtype), mask], dim=1)
        labels = torch.cat([torch.full(prefix.shape[:2], -100), ids.masked_fill(mask == 0, -100)], dim=1)
        return self.lm(inputs_embeds=embeds, attention_mask=attention, labels=labels).loss


def text_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    bpe = BPETokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=600, special_tokens=["<eos>", "<pad>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")


def dice(pred: np.ndarray, truth: np.ndarray) -> float:
    """Pooled foreground Dice over classes 1.., pixels of class-matching labels."""
    hits = sum(((pred == c) & (truth == c)).sum() for c in np.unique(truth[truth > 0]))
    return float(2 * hits / max((pred > 0).sum() + (truth > 0).sum(), 1))


def write_masks(model: PrefixLM, hf, text: MaskText, images: torch.Tensor, constrained: bool, budget: int):
    """(texts, strictly decodable count, masks decoded leniently) for ``images``, greedy."""
    prefix = model.prefix(images)
    processors = LogitsProcessorList([MaskLogitsProcessor(text, hf, budget)] if constrained else [])
    ids = model.lm.generate(inputs_embeds=prefix, attention_mask=torch.ones(prefix.shape[:2], dtype=torch.long),
                            max_new_tokens=budget, do_sample=False, logits_processor=processors,
                            pad_token_id=hf.pad_token_id, eos_token_id=hf.eos_token_id)
    texts = hf.batch_decode(ids, skip_special_tokens=True)
    strict = 0
    for written in texts:
        try:
            text.decode(written, errors="strict")
            strict += 1
        except ValueError:
            pass
    return texts, strict, np.stack([text.decode(t, errors="ignore") for t in texts])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--patches", type=int, default=64)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    config = load_config("synthetic-tiny")
    tokenizer = build_tokenizer(config)
    text = MaskText(tokenizer, class_words(config.data.class_names))
    train, val = build_datasets(config, tokenizer)
    print(f"machine: {platform.machine()}, {os.cpu_count()} CPUs, torch {torch.__version__}, {args.threads} "
          f"thread(s); load {os.getloadavg()[0]:.2f}")
    started = time.perf_counter()
    hf = text_tokenizer([text.to_text(train[i]["tokens"].numpy()) for i in range(2000)])
    model = PrefixLM(len(hf), hf.eos_token_id, hf.pad_token_id)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.01)
    for step in range(args.steps):
        items = [train[(step * args.batch + i) % len(train)] for i in range(args.batch)]
        batch = hf([text.to_text(it["tokens"].numpy()) + "<eos>" for it in items], return_tensors="pt", padding=True)
        loss = model.loss(torch.stack([it["image"] for it in items]), batch["input_ids"], batch["attention_mask"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 100 == 0 or step == args.steps - 1:
            print(f"step {step}: loss {loss.item():.3f} ({time.perf_counter() - started:.0f} s)", flush=True)
    model.eval()
    items = [val[i % len(val)] for i in range(args.patches)]
    images, truth = torch.stack([it["image"] for it in items]), np.stack([it["mask_small"].numpy() for it in items])
    lengths = [len(hf.encode(text.to_text(it["tokens"].numpy()))) for it in items]
    budget = int(max(lengths) * 1.5)
    print(f"validation: {len(items)} patches, truth texts {np.mean(lengths):.0f} LM tokens (max {max(lengths)}); "
          f"max_new_tokens {budget}")
    print("| grammar | texts that decode strictly | foreground Dice (lenient decoding) | s |")
    print("|---|---:|---:|---:|")
    with torch.no_grad():
        for constrained in (False, True):
            began = time.perf_counter()
            _, strict, masks = write_masks(model, hf, text, images, constrained, budget)
            print(f"| {'MaskLogitsProcessor' if constrained else 'none'} | {strict} / {len(items)} | "
                  f"{dice(masks, truth):.3f} | {time.perf_counter() - began:.1f} |", flush=True)


if __name__ == "__main__":
    main()
