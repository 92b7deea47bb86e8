"""The Pix2Seq model: backbone -> transformer encoder -> causal transformer decoder over mask tokens.

The config is in config.py, the encoder and decoder transformers in transformer.py. The model composes
what the config turns on, each in its own module: the feature pyramid and the heads that read it
(pyramid.py: the pointer start head, the per-cell head), one decoder step per run (run_step.py) and the
boundary refiner (refine.py). The generation loop is generate.py's, turning tokens into masks decode.py's;
what the model offers to training and inference is written down in protocol.py. Build a model with
``rleseg.models.create_model`` (factory.py). Shapes use B = batch, R = token rows (B, or B times the
sequences of an image), N = visual tokens (feature-map cells), S = mask cells, T = sequence positions,
D = width, V = vocabulary, H = heads.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rleseg.tokens import EOS, PAD, MaskTokenizer

from .config import ModelConfig
from .decode import decode_generation
from .draft import verify
from .generate import DecodingOptions, Generation, resolve_earliest_instance, sample
from .layers import eval_mode
from .protocol import Prediction
from .pyramid import CellHead, PointerHead, Pyramid, on_grid
from .refine import Refiner, refine_instances
from .run_step import RunStep, check_run_step, last_pair, run_pairs, teacher_forced_pairs
from .transformer import Decoder, DecoderCache, Encoder


# ----------------------------------------------------------------------------- model
@dataclass
class Encoded:
    """What :meth:`Pix2Seq.encode` computes once per batch of images, read by every decoder pass."""

    memory: torch.Tensor  # (B, N, D) the encoder's tokens the decoder cross-attends to
    table: torch.Tensor  # (V, D) the tied token table, or (B, V, D) with the image's content in its pointer rows
    cells: torch.Tensor | None  # (B, S, D) the pyramid's features at the mask cells; None without a pyramid

    def select(self, rows: torch.Tensor) -> Encoded:
        """The images ``rows`` (R,) indexes, in its order."""
        table = self.table if self.table.ndim == 2 else self.table[rows]  # a shared table serves every row
        return Encoded(self.memory[rows], table, None if self.cells is None else self.cells[rows])

    def repeat(self, copies: int) -> Encoded:
        """Each image ``copies`` times, adjacent: one per token row when an image writes several sequences."""
        if copies == 1:
            return self
        return self.select(torch.arange(len(self.memory), device=self.memory.device).repeat_interleave(copies))


class Pix2Seq(nn.Module):
    """Image -> mask tokens -> label maps (:class:`~rleseg.models.protocol.SegmentationModel`). Build with
    :func:`rleseg.models.create_model`, which also resolves ``start_head`` "auto".

    Images are (B, 3, H, W) float RGB in [0, 1], H and W divisible by the backbone stride (32 for ResNets).
    Token sequences follow ``self.tokenizer``: inputs start with its BOS (or a sequence's prompt, one per
    class or band: ``tokenizer.prompts``); targets are body + EOS, padded with PAD (0).
    """

    def __init__(self, config: ModelConfig, tokenizer: MaskTokenizer):
        super().__init__()
        if config.start_head not in ("table", "pointer"):
            raise ValueError(f"start_head must be 'table' or 'pointer' here, got {config.start_head!r} "
                             "(create_model resolves 'auto')")
        if config.run_step:
            check_run_step(tokenizer)
        if config.refine_band > 0 and tokenizer.task not in ("semantic", "panoptic"):
            raise ValueError(f"refine_band needs a semantic or panoptic image tokenizer, got task {tokenizer.task!r}")
        self.config, self.tokenizer = config, tokenizer
        c = config
        self.encoder = self.build_encoder(config)
        self.decoder = Decoder(config, tokenizer)
        self.run_step = RunStep(c.dim, c.mlp_dim) if c.run_step else None
        self.pyramid = self.pointer = self.cell_head = self.refiner = None
        if c.uses_pyramid:
            backbone = self.encoder.backbone
            self.pyramid = Pyramid(c.dim, c.pyramid_stride, backbone.feature_channels, backbone.feature_strides,
                                   tokenizer)
        if c.start_head == "pointer":
            self.pointer = PointerHead(c.dim, c.init_std, tokenizer)
        if c.aux_dense_weight > 0:
            self.cell_head = CellHead(c.dim, tokenizer)
        if c.refine_band > 0:
            self.refiner = Refiner(c.dim, tokenizer.num_classes, c.refine_band)
        backbone = set(self.encoder.backbone.modules())  # keeps timm's own (or pretrained) init
        for module in self.modules():
            if isinstance(module, nn.Linear) and module not in backbone:
                nn.init.normal_(module.weight, std=c.init_std)
                nn.init.zeros_(module.bias)
        for part in (self.pointer, self.run_step):
            if part is not None:
                part.reset_parameters()
        self.register_buffer("token_loss_weight", self._token_loss_weight(), persistent=False)

    def build_encoder(self, config: ModelConfig) -> Encoder:
        """images -> memory (B, N, D). The video models (models/video.py) return an Encoder subclass that
        reads windows of frames; ``self.config`` and ``self.tokenizer`` are set when this runs."""
        return Encoder(config)

    def _token_loss_weight(self) -> torch.Tensor:
        c, vocab = self.config, self.tokenizer.vocab
        weight = torch.ones(vocab.size)
        weight[PAD], weight[EOS] = c.pad_weight, c.eos_weight
        for name in ("class", "lac", "end_class"):
            if name in vocab.ranges:
                weight[vocab[name].first : vocab[name].stop] = c.class_weight
        return weight  # (V,)

    # ----------------------------------------------------------------------------- the model interface
    @property
    def target_keys(self) -> tuple[str, ...]:
        """The token sequences; with a refiner also the full-resolution and the grid masks it learns from."""
        return ("tokens", "mask", "mask_small") if self.refiner is not None else ("tokens",)

    @property
    def max_seq_len(self) -> int:
        return self.config.max_seq_len

    @property
    def grid_factor(self) -> int:
        return self.config.image_size // self.tokenizer.mask_size[-1]

    @property
    def refines(self) -> bool:
        return self.refiner is not None

    def loss(self, images: torch.Tensor, target_tokens: torch.Tensor, mask: torch.Tensor | None = None,
             mask_small: torch.Tensor | None = None) -> torch.Tensor:
        """Teacher-forced, token-weighted cross-entropy. target_tokens (R, T) int64: body + EOS + PAD, R = B
        sequences, or B times an image's adjacent sequences (``tokenizer.prompts``, as ``Collate`` splits
        them); the model feeds each row's prompt + target_tokens[:, :-1]. Returns a scalar: sum(w * ce) /
        sum(w), plus ``aux_dense_weight`` times the per-cell head's loss, plus ``refine_weight`` times the
        refiner's loss on the first ``refine_batch`` images, which needs the batch's ``mask`` (B, P, P) and
        ``mask_small`` (B, h, w)."""
        encoded = self.encode(images)
        self.sequences_per_image(len(target_tokens), len(encoded.memory))  # ValueError before the prompts misalign
        first = self.first_tokens(len(target_tokens), target_tokens.device)[:, None]
        logits = self.token_logits(torch.cat([first, target_tokens[:, :-1]], dim=1), encoded)  # (R, T, V)
        ce = F.cross_entropy(logits.flatten(0, 1).float(), target_tokens.flatten(), reduction="none",
                             label_smoothing=self.config.label_smoothing)  # (R*T,)
        weight = self.token_loss_weight[target_tokens.flatten()]
        loss = (ce * weight).sum() / weight.sum()
        if self.cell_head is not None:
            loss = loss + self.config.aux_dense_weight * self.cell_head.loss(encoded.cells, target_tokens)
        if self.refiner is not None:
            if mask is None or mask_small is None:
                raise ValueError("a model with a refiner (refine_band > 0) trains on the batch's mask and mask_small")
            part = slice(0, self.config.refine_batch or None)
            cells = on_grid(encoded.cells[part], self.tokenizer)
            loss = loss + self.config.refine_weight * self.refiner.training_loss(
                images[part], cells, mask[part], mask_small[part], self.config.refine_jitter)
        return loss

    @torch.no_grad()
    def predict(self, images: torch.Tensor, options: DecodingOptions | None = None,
                generator: torch.Generator | None = None) -> Prediction:
        """Generate (:meth:`generate`), decode (models/decode.py) and, with a refiner and ``options.refine``,
        redraw the masks' boundary band at the patch's resolution from the pyramid computed once for both
        (panoptic masks: the redrawn pixels' instances too, :func:`~rleseg.models.refine.refine_instances`)."""
        options = options or DecodingOptions()
        with eval_mode(self):
            encoded = self.encode(images)
            prediction = decode_generation(self.tokenizer, self.generate(images, options, generator, encoded),
                                           options.constrained)
            if self.refiner is None or not options.refine:
                return prediction
            panoptic = self.tokenizer.task == "panoptic"
            grids = [np.stack([m[i] for m in prediction.masks]) for i in (0, 1)] if panoptic else [
                np.stack(prediction.masks)]
            coarse, *ids = (torch.from_numpy(g.astype(np.int64)).to(images.device) for g in grids)  # (B, h, w)
            refined = self.refiner.labels(images, on_grid(encoded.cells, self.tokenizer), coarse)
            if not panoptic:
                return prediction.refined(list(refined.cpu().numpy()))
            refined, instances = refine_instances(coarse, ids[0], refined, self.tokenizer.thing_classes,
                                                  self.refiner.band)
        return prediction.refined(list(zip(refined.cpu().numpy(), instances.cpu().numpy(), strict=True)))

    # ----------------------------------------------------------------------------- encoding and decoding
    def encode(self, images: torch.Tensor) -> Encoded:
        """images -> the memory, the token table (per image with the pointer head) and the pyramid's cells."""
        if self.pyramid is None:
            return Encoded(self.encoder(images), self.decoder.embedding_table(), None)
        memory, cells = self.memory_and_cells(images)
        content = None if self.pointer is None else self.pointer(cells)
        return Encoded(memory, self.decoder.embedding_table(content), cells)

    def memory_and_cells(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """images -> (memory (B, N, D), the pyramid's features at the S start cells (B, S, D)). The video
        model overrides this: its start cells are per frame or per TAC cell."""
        maps = self.encoder.backbone.features(images)
        memory = self.encoder.encode(maps)
        return memory, self.pyramid(maps, memory)

    def forward(self, images: torch.Tensor, input_tokens: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W), input_tokens (R, T) int64 starting with each row's prompt (:meth:`first_tokens`)
        -> logits (R, T, V) float; logits[:, t] predict the token after input_tokens[:, t]."""
        return self.token_logits(input_tokens, self.encode(images))

    def token_logits(self, input_tokens: torch.Tensor, encoded: Encoded) -> torch.Tensor:
        """Teacher-forced logits (R, T, V) of input_tokens (R, T). With the run step the decoder reads the
        inputs as run pairs and writes two tokens a position: at pair position i the start after it
        (logits[:, 2i]) and, from the start that input_tokens hold there, its end (logits[:, 2i + 1])."""
        rows = self.sequences_per_image(len(input_tokens), len(encoded.memory))
        table = encoded.table
        if self.run_step is None:
            x = self.decoder(self.decoder.rows_of(table, input_tokens, rows), encoded.memory, rows=rows)
            return self.decoder.logits(x, table, rows)
        pairs, starts = teacher_forced_pairs(input_tokens)
        x = self.decoder(self.run_step.embed(self.decoder.rows_of(table, pairs, rows)), encoded.memory, rows=rows)
        ends = self.run_step.end_states(x, self.decoder.rows_of(table, starts, rows))
        logits = torch.stack([self.decoder.logits(x, table, rows), self.decoder.logits(ends, table, rows)], 2)
        return logits.flatten(1, 2)[:, : input_tokens.shape[1]]  # (R, T, V): start, end, start, end, ...

    @torch.no_grad()
    def generate(self, images: torch.Tensor, options: DecodingOptions | None = None,
                 generator: torch.Generator | None = None, encoded: Encoded | None = None, **changes) -> Generation:
        """Tokens and their log-probabilities (:class:`~rleseg.models.generate.Generation`) for every image:
        a row per image, or per sequence of an image (per class or band: ``tokenizer.prompts``), an image's
        adjacent, decoded as one batch. ``changes`` override fields of ``options``, as in
        ``generate(images, temperature=0, max_len=20)``; ``encoded``: :meth:`encode`'s output in eval mode,
        when the caller has it already. Decoding the tokens into masks is :meth:`predict`'s."""
        options = dataclasses.replace(options or DecodingOptions(), **changes)
        options.length_for(self.config.max_seq_len)
        options = resolve_earliest_instance(options, self.tokenizer.task)
        with eval_mode(self):
            encoded = self.encode(images) if encoded is None else encoded
            if self.drafts(options):
                return verify(self, encoded, self.cell_head.draft(encoded.cells), options)
            return sample(self, encoded.repeat(len(self.tokenizer.prompts)), options, generator)

    def drafts(self, options: DecodingOptions) -> bool:
        """Whether generation with ``options`` verifies drafts (models/draft.py): greedy decoding under the
        grammar with the cache, ``method`` "draft", a per-cell head to draft with, one token a step and one
        sequence an image of a semantic tokenizer; otherwise it is step by step (the same tokens). With the run
        step drafting halved the passes but was slower on the CPU (docs/results.md): it decodes a run a step."""
        o = options
        greedy = o.method == "draft" and o.temperature == 0 and o.constrained and o.use_cache
        image = self.tokenizer.task == "semantic" and len(self.tokenizer.prompts) == 1
        return greedy and image and self.cell_head is not None and self.run_step is None

    @property
    def tokens_per_step(self) -> int:
        """Tokens one decoder pass of generation writes: a run's start and end with the run step, else one."""
        return 1 if self.run_step is None else 2

    def first_tokens(self, rows: int, device: torch.device | None = None) -> torch.Tensor:
        """(rows,) int64, the decoder's first input token of each row: row r reads ``tokenizer.prompts[r % n]``
        (BOS when the tokenizer writes one sequence per mask)."""
        prompts = torch.tensor(self.tokenizer.prompts, dtype=torch.long, device=device)
        return prompts.repeat(rows // len(prompts))

    def new_cache(self, encoded: Encoded, steps: int) -> DecoderCache:
        """An empty decoder cache for ``steps`` decoder passes over ``encoded``'s rows."""
        return self.decoder.new_cache(encoded.memory, steps)

    def next_states(self, tokens: torch.Tensor, step: int, encoded: Encoded, cache: DecoderCache | None
                    ) -> torch.Tensor:
        """The decoder state (R, 1, D) after the input of generation step ``step``: tokens[:, : step + 1] (the
        first token and what is generated so far), or with the run step the run pairs of tokens[:, : 2 step + 1].
        With a ``cache`` only the step's own input goes through the decoder (the past is in the cache);
        without one, the whole prefix does again."""
        if self.run_step is not None:
            inputs = run_pairs(tokens[:, : 2 * step + 1]) if cache is None else last_pair(tokens, step)
            embedded = self.run_step.embed(self.decoder.rows_of(encoded.table, inputs))
        else:
            inputs = tokens[:, : step + 1] if cache is None else tokens[:, step : step + 1]
            embedded = self.decoder.rows_of(encoded.table, inputs)
        if cache is None:
            return self.decoder(embedded, encoded.memory)[:, -1:]
        return self.decoder(embedded, cache=cache, pos=step)

    def window_logits(self, inputs: torch.Tensor, pos: torch.Tensor, encoded: Encoded, cache: DecoderCache
                      ) -> torch.Tensor:
        """Logits (R, T, V) float32 of the token after each of ``inputs`` (R, T), row r's at positions pos[r]
        .. pos[r]+T-1, in one decoder pass through the ``cache`` (which then holds them): draft verification."""
        states = self.decoder(self.decoder.rows_of(encoded.table, inputs), cache=cache, pos=pos)
        return self.decoder.logits(states, encoded.table).float()

    def next_logits(self, states: torch.Tensor, written: torch.Tensor, encoded: Encoded, columns: tuple | None
                    ) -> torch.Tensor:
        """Logits (R, V) float32 of the next token from the step's ``states`` (R, 1, D), given the tokens
        ``written`` (R, k) so far in this step: none (k = 0), or with the run step the start (k = 1), whose
        end comes next. ``columns``: the grammar's candidates, the only tokens scored (the rest -inf)."""
        if written.shape[1]:
            states = self.run_step.end_states(states, self.decoder.rows_of(encoded.table, written))
        return self.decoder.logits(states, encoded.table, columns=columns)[:, -1].float()

    def sequences_per_image(self, rows: int, images: int) -> int:
        """The token rows of one image (1, or one per foreground class / band: ``tokenizer.prompts``);
        ValueError unless ``rows`` is ``images`` times that."""
        per_image = len(self.tokenizer.prompts)
        if rows != per_image * images:
            raise ValueError(f"{rows} token sequences for {images} images; the tokenizer writes {per_image} per image")
        return per_image
