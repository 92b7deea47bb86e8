"""rleseg.llm: a Hugging Face model under MaskLogitsProcessor writes only mask texts that decode strictly and end
within max_new_tokens. Offline: a byte-level BPE tokenizer trained here on mask texts, a tiny random GPT-2."""

import numpy as np
import pytest
import torch
from tokenizers import Tokenizer as BPETokenizer
from tokenizers import decoders, models, pre_tokenizers, trainers
from transformers import GPT2Config, GPT2LMHeadModel, LogitsProcessor, LogitsProcessorList, PreTrainedTokenizerFast

from rleseg.llm import MaskLogitsProcessor, token_strings
from rleseg.tokens import PanopticTokenizer, Tokenizer
from rleseg.tokens.text import MaskText

PROMPT = "segment:"


def shapes_texts(text: MaskText, count: int, seed: int = 0) -> list[str]:
    rng, (height, width) = np.random.default_rng(seed), text.tokenizer.mask_size
    out = []
    for _ in range(count):
        mask = np.zeros((height, width), np.int64)
        for _ in range(rng.integers(1, 4)):
            y, x = rng.integers(0, height - 2), rng.integers(0, width - 2)
            mask[y : y + rng.integers(1, 5), x : x + rng.integers(1, 6)] = rng.integers(1, text.tokenizer.num_classes)
        out.append(text.encode(mask))
    return out


def byte_level_tokenizer(texts: list[str]) -> PreTrainedTokenizerFast:
    bpe = BPETokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=400, special_tokens=["<eos>", "<pad>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    bpe.train_from_iterator([f"{PROMPT} {t}" for t in texts], trainer)
    return PreTrainedTokenizerFast(tokenizer_object=bpe, eos_token="<eos>", pad_token="<pad>")


@pytest.fixture(scope="module")
def semantic():
    text = MaskText(Tokenizer((12, 12), 3, extent="end"), ["background", "cell", "nucleus"])
    return text, byte_level_tokenizer(shapes_texts(text, 150))


def tiny_model(hf) -> GPT2LMHeadModel:
    torch.manual_seed(0)
    config = GPT2Config(vocab_size=len(hf), n_embd=32, n_layer=2, n_head=2, n_positions=256,
                        eos_token_id=hf.eos_token_id, pad_token_id=hf.pad_token_id, bos_token_id=hf.eos_token_id)
    return GPT2LMHeadModel(config).eval()


class NeverEnd(LogitsProcessor):
    """Pushes a model away from its end token and towards opening runs: the budget must end it."""

    def __init__(self, eos: int, favoured: list[int]):
        self.eos, self.favoured = eos, favoured

    def __call__(self, input_ids, scores):
        scores = scores.clone()
        scores[:, self.eos] -= 1e4
        scores[:, self.favoured] += 5.0
        return scores


def write(model, hf, text, seed, max_new_tokens, constrained=True, before=(), **options):
    torch.manual_seed(seed)
    prompt = hf(PROMPT, return_tensors="pt")
    processors = [*before, MaskLogitsProcessor(text, hf, max_new_tokens)] if constrained else [*before]
    ids = model.generate(**prompt, max_new_tokens=max_new_tokens, logits_processor=LogitsProcessorList(processors),
                         **options)
    new = ids[:, prompt["input_ids"].shape[1] :]
    return [hf.decode(row, skip_special_tokens=True) for row in new], new


def test_token_strings_rebuild_any_text(semantic):
    text, hf = semantic
    strings = token_strings(hf)
    for written in shapes_texts(text, 20, seed=5):
        assert "".join(strings[i] for i in hf.encode(written)) == written
    assert strings[hf.eos_token_id] == ""


def test_sampled_texts_always_decode_strictly_and_without_the_processor_they_do_not(semantic):
    text, hf = semantic
    model = tiny_model(hf)
    valid, unconstrained_valid = 0, 0
    for seed in range(8):
        [written], _ = write(model, hf, text, seed, 80, do_sample=True, temperature=1.5)
        text.decode(written, errors="strict")
        valid += 1
        [free], _ = write(model, hf, text, seed, 80, constrained=False, do_sample=True, temperature=1.5)
        try:
            text.decode(free, errors="strict")
            unconstrained_valid += 1
        except ValueError:
            pass
    assert valid == 8
    assert unconstrained_valid < 8


def test_a_model_that_never_ends_is_ended_within_the_budget_with_every_run_closed(semantic):
    text, hf = semantic
    model = tiny_model(hf)
    favoured = [i for i, s in enumerate(token_strings(hf)) if s.strip().startswith("<") or s.strip().isdigit()]
    for seed, budget in [(0, 60), (1, 77), (2, 100)]:
        [written], new = write(model, hf, text, seed, budget, before=[NeverEnd(hf.eos_token_id, favoured)],
                               do_sample=True)
        assert new.shape[1] <= budget and new[0, -1] == hf.eos_token_id
        assert written.count("<r") >= 2  # it wrote runs until the budget ended it
        assert text.decode(written, errors="strict").any()


def test_beam_search_and_panoptic_texts_decode_strictly():
    text = MaskText(PanopticTokenizer((8, 8), 3, thing_classes=[1]), ["background", "cell", "sky"])
    empty = text.encode(np.zeros((8, 8), np.int64), np.zeros((8, 8), np.int64))
    panoptic = [empty, "<r 0 2> <r 8 2> <g cell> <r 40 8> <g sky>", "<r 9 3> <g cell> <r 20 1> <g cell>"]
    hf = byte_level_tokenizer(panoptic * 20)
    model = tiny_model(hf)
    favoured = [i for i, s in enumerate(token_strings(hf)) if "<" in s]
    texts, _ = write(model, hf, text, 0, 60, before=[NeverEnd(hf.eos_token_id, favoured)], num_beams=3,
                     num_return_sequences=3, do_sample=False)
    for written in texts:
        semantic_map, instances = text.decode(written, errors="strict")
        assert (instances[semantic_map == 1] > 0).all()
    assert any("<g" in t for t in texts)


def test_a_tokenizer_that_cannot_spell_every_character_is_refused(semantic):
    text, _ = semantic
    words = BPETokenizer(models.WordLevel({"<eos>": 0, "<r": 1, "cell>": 2, "[UNK]": 3}, unk_token="[UNK]"))
    words.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    hf = PreTrainedTokenizerFast(tokenizer_object=words, eos_token="<eos>")
    with pytest.raises(ValueError, match="no single-character token"):
        MaskLogitsProcessor(text, hf, 50)
