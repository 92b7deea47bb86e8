"""The token model's config: one typed dataclass, every field defaulted (the presets are in factory.py)."""

from __future__ import annotations

from dataclasses import dataclass, field

from rleseg.typed_yaml import check_range


@dataclass
class ModelConfig:
    backbone: str = "resnet50"  # any timm model with features_only; the last feature map is used
    pretrained: bool | str = False  # False, True (timm's cache), "packaged" or a local weights file
    freeze_backbone: bool = False  # the paper froze its (COCO-pretrained) backbone
    backbone_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model
    image_size: int = 640  # the patch size predict cuts images into; a config sets it from data.patch.patch_size
    dim: int = 256  # width of the encoder and decoder tokens
    heads: int = 8  # attention heads; they divide dim
    mlp_dim: int = 1024  # hidden width of the transformer MLPs
    encoder_layers: int = 6  # transformer layers over the backbone's last map
    decoder_layers: int = 6  # causal decoder layers
    dropout: float = 0.1  # in attention, MLPs and embeddings
    attention_dropout: float | None = None  # on the attention weights alone; None: ``dropout``
    drop_path: float = 0.1  # stochastic depth of the last layer; earlier layers get linearly less
    max_seq_len: int = 512  # longest token sequence (body + EOS) trained on or generated; also the positions
    # Start tokens carry geometry: their embedding (tied with their output row) is a fixed sin-cos code of
    # the start's position on the mask grid plus a zero-initialised learned residual. Measured as a large
    # gain in learning speed (docs/method.md section 8); False gives plain learned embeddings.
    start_geometry: bool = True
    # "pointer": the start rows of the (tied) embedding table also carry the image's own features at each
    # start cell (a feature pyramid brought to the mask grid, through a zero-initialised projection), so
    # choosing a start reads the image where it lands; needs 1-D starts. With tokenizer extent "end" the
    # run-end rows point at their cell the same way (EndPointer). Video: a volume start (frame, cell)
    # reads that frame's features, a TAC start the frames' features averaged at its cell (models/video.py).
    # "table": the rows are the same for every image (the paper's model). "auto": pointer where the
    # tokenizer allows it (image, panoptic and video tokenizers with 1-D starts), else table. Measured
    # on nuclei at 3 CPU minutes: Dice 0.23 (table, 2-D starts) -> 0.65 (pointer), docs/results.md.
    start_head: str = "auto"
    pyramid_stride: int = 4  # finest backbone level the pyramid of start_head "pointer" / aux_dense_weight uses
    # Weight of an auxiliary per-cell cross-entropy on the pyramid's features at the mask grid (pyramid.py
    # CellHead; training only, the mask from the target tokens). 0 = off. Image tokenizers (semantic and panoptic:
    # for panoptic, one more class marks each instance's first cell, where its group opens).
    aux_dense_weight: float = 0.0
    # Boundary refinement (models/refine.py): a small convolutional head redraws the decoded mask at the
    # patch's full resolution from the image and the pyramid, but only the pixels within this many mask
    # cells of a class boundary of the decoded mask; every other pixel is the decoded mask upsampled
    # (nearest), so every object decision stays in the tokens. 0 = off. Semantic and panoptic image tokenizers
    # (a redrawn pixel of a thing class joins the nearest decoded instance of its class, refine.py);
    # builds the pyramid. Inference can still give the token-only mask (InferenceOptions.refine false).
    refine_band: int = 0
    refine_weight: float = 1.0  # of the refinement's cross-entropy over the band pixels, in the training loss
    # Share of the training masks' cells that take a random neighbour's label before refinement (moving
    # boundaries by a cell), so that the refiner learns to correct masks as imperfect as decoded ones.
    refine_jitter: float = 0.1
    # The refiner trains on the first this many images of each batch (0 = all): its full-resolution
    # convolutions cost a token step about 45% on a CPU at 16 images, and 6.9 k parameters learn from fewer.
    refine_batch: int = 0
    # One decoder step per run instead of per token: the decoder reads a run's start and end as one input
    # (a projection of their two rows) and writes them from one state, the start from its logits and the end
    # from a light head that reads the state and the start just chosen. Half the sequential steps of
    # generation and half the positions in training. Needs runs of a start and an end: 1-D starts,
    # tokenizer extent "end", scheme lac (the class fused with the end) or binary.
    run_step: bool = False
    # Loss weights per target token; the paper weights padding 0.1.
    pad_weight: float = 0.1
    eos_weight: float = 1.0  # of the EOS target
    class_weight: float = 1.0  # tokens that carry a class ("class", "lac", "end_class"), against imbalance
    label_smoothing: float = 0.0  # of the token cross-entropy
    init_std: float = 0.02  # std of the normal initialisation of the linear layers and embeddings
    tokenizer: dict | None = None  # the tokenizer's to_dict(): a checkpoint describes its own tokens

    def __post_init__(self) -> None:
        check_range(self, 1, None, "image_size", "dim", "heads", "mlp_dim", "decoder_layers", "max_seq_len",
                    "pyramid_stride")
        check_range(self, 0, None, "encoder_layers", "aux_dense_weight", "pad_weight", "eos_weight", "class_weight")
        check_range(self, 0, 1, "dropout", "attention_dropout", "drop_path", "label_smoothing", high_open=True)
        check_range(self, 0, None, "refine_band", "refine_weight", "refine_batch")
        check_range(self, 0, 1, "refine_jitter")
        check_range(self, 0, None, "init_std", low_open=True)
        if self.start_head not in START_HEADS:
            raise ValueError(f"start_head must be one of {', '.join(START_HEADS)}, got {self.start_head!r}")
        if self.dim % self.heads:
            raise ValueError(f"heads must divide dim {self.dim}, got {self.heads}")

    @property
    def uses_pyramid(self) -> bool:
        """Whether the model builds the feature pyramid (for the pointer start head or the auxiliary loss)."""
        return self.start_head == "pointer" or self.aux_dense_weight > 0 or self.refine_band > 0


START_HEADS = ("auto", "table", "pointer")  # create_model resolves "auto"; the model sees the other two
