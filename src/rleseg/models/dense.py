"""The dense baseline: the token model's timm backbone under a U-Net style decoder that predicts a
class logit per pixel at full input resolution, trained with cross-entropy + soft Dice.

It is there to measure what the token formulation costs or gains, so it is built, trained, evaluated and
saved like the token model: ``model.architecture: dense`` in an experiment config, the same
:func:`rleseg.models.create_model` (a :class:`DenseConfig` picks this model), the same checkpoint file
format and the same interface (models/protocol.py): its ``loss`` takes the batch's full-resolution
``mask`` (``ignore_index`` kept), and ``predict`` gives the argmax of its logits at the image's own
resolution, with no tokens.

For a panoptic task, ``instances`` names the rule (models/instances.py) that turns its class map into
instances: ``components`` (each connected region of a thing class) or ``interiors`` (a learnt boundary
class, the interiors grown back over it); ``predict`` then gives (semantic, instances) pairs, as the token
model does, so that validation, stitching, ``evaluate`` and ``predict`` treat both alike.

Read top to bottom: config, blocks, decoder, loss, model. Shapes use B = batch, C = classes, H x W = image,
h x w = a feature map.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from rleseg.tokens import MaskTokenizer
from rleseg.typed_yaml import check_range

from .backbone import Backbone
from .generate import DecodingOptions
from .instances import instance_rule
from .layers import eval_mode
from .protocol import Prediction

MIN_WIDTH = 16  # the decoder halves its width per finer level, down to this


@dataclass
class DenseConfig:
    backbone: str = "resnet50"  # any timm model with features_only; every level feeds the decoder
    pretrained: bool | str = False  # False, True (timm's cache), "packaged" or a local weights file
    freeze_backbone: bool = False  # train the decoder only
    backbone_kwargs: dict = field(default_factory=dict)  # passed to timm.create_model; out_indices picks levels
    image_size: int = 640  # the patch size predict cuts images into; a config sets it from data.patch.patch_size
    width: int = 256  # the decoder's width at the coarsest level; it halves per finer level
    dropout: float = 0.1  # before the classifier
    label_smoothing: float = 0.0  # of the pixel cross-entropy
    tokenizer: dict | None = None  # the (semantic or panoptic) tokenizer's to_dict(), as token models store it
    # Panoptic tasks: how the class map becomes instances (models/instances.py): "components" (each connected
    # region of a thing class) or "interiors" (one more class, the boundary band inside each object, learnt;
    # the interiors grown back over it). Semantic tasks: null.
    instances: Literal["components", "interiors"] | None = None
    boundary_width: int = 2  # instances "interiors": the boundary band's width inside each object's edge, pixels
    max_seq_len: ClassVar[None] = None  # no tokens: what a token model's config says of its sequences

    def __post_init__(self) -> None:
        check_range(self, 1, None, "image_size", "width", "boundary_width")
        check_range(self, 0, 1, "dropout", "label_smoothing", high_open=True)


# ----------------------------------------------------------------------------- blocks
class ConvNormAct(nn.Sequential):
    """Conv (no bias: the norm has one) -> BatchNorm -> ReLU, keeping the spatial size."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int = 3):
        super().__init__(
            nn.Conv2d(in_channels, out_channels, kernel, padding=kernel // 2, bias=False),
            nn.BatchNorm2d(out_channels),
            nn.ReLU(inplace=True),
        )


class UpBlock(nn.Module):
    """Upsample the coarser map to the skip's size, concatenate them, two 3x3 convolutions."""

    def __init__(self, in_channels: int, skip_channels: int, out_channels: int):
        super().__init__()
        self.conv1 = ConvNormAct(in_channels + skip_channels, out_channels)
        self.conv2 = ConvNormAct(out_channels, out_channels)

    def forward(self, x: torch.Tensor, skip: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")  # (B, C_in, h, w) of the skip
        return self.conv2(self.conv1(torch.cat([x, skip], dim=1)))  # (B, C_out, h, w)


# ----------------------------------------------------------------------------- decoder
class UNetDecoder(nn.Module):
    """The backbone's maps, finest first, -> features (B, out_channels, h0, w0) at the finest map's size.

    The coarsest map is projected to ``width`` channels; each finer level then gets an :class:`UpBlock`
    whose width halves per level (down to MIN_WIDTH), so every level costs about the same.
    """

    def __init__(self, channels: list[int], width: int):
        super().__init__()
        levels = len(channels)
        self.center = ConvNormAct(channels[-1], width, kernel=1)
        widths = [max(MIN_WIDTH, width >> (levels - 1 - i)) for i in range(levels)]  # widths[-1] == width
        self.blocks = nn.ModuleList(
            UpBlock(widths[i + 1], channels[i], widths[i]) for i in reversed(range(levels - 1))
        )  # coarse to fine
        self.out_channels = widths[0]

    def forward(self, features: list[torch.Tensor]) -> torch.Tensor:
        x = self.center(features[-1])
        for block, skip in zip(self.blocks, reversed(features[:-1]), strict=True):
            x = block(x, skip)
        return x


# ----------------------------------------------------------------------------- loss
def ce_dice_loss(
    logits: torch.Tensor, labels: torch.Tensor, label_smoothing: float = 0.0, smooth: float = 1.0
) -> torch.Tensor:
    """Mean pixel cross-entropy + (1 - soft Dice averaged over classes), a scalar.

    logits (B, C, H, W) float; labels (B, H, W) int64. Pixels whose label is not a class 0..C-1
    (``ignore_index``, 255 by default) count in neither term and get no gradient. The Dice of each class
    pools the batch's pixels; ``smooth`` keeps a class absent from both labels and prediction at Dice 1.
    A batch of ignored pixels only has loss 0.
    """
    num_classes = logits.shape[1]
    valid = (labels >= 0) & (labels < num_classes)  # (B, H, W)
    target = labels.masked_fill(~valid, 0)
    ce = F.cross_entropy(logits, target, reduction="none", label_smoothing=label_smoothing)  # (B, H, W)
    ce = (ce * valid).sum() / valid.sum().clamp(min=1)
    classes = torch.arange(num_classes, device=labels.device).view(1, -1, 1, 1)
    truth = ((target[:, None] == classes) & valid[:, None]).to(logits.dtype)  # (B, C, H, W) one-hot
    probs = logits.softmax(dim=1) * valid[:, None]  # (B, C, H, W)
    overlap = (probs * truth).sum(dim=(0, 2, 3))  # (C,)
    total = probs.sum(dim=(0, 2, 3)) + truth.sum(dim=(0, 2, 3))  # (C,)
    dice = (2 * overlap + smooth) / (total + smooth)  # (C,)
    return ce + (1 - dice.mean())


# ----------------------------------------------------------------------------- model
class MultiScaleEncoder(nn.Module):
    """images (B, 3, H, W) in [0, 1] -> the backbone's feature maps, finest first.

    A wrapper so that the backbone's parameter names start with ``encoder.backbone.`` as in the token
    model (the optimizer's backbone learning rate keys on that prefix). Every level timm exposes is used,
    unless ``backbone_kwargs`` names ``out_indices``.
    """

    def __init__(self, config: DenseConfig):
        super().__init__()
        kwargs = dict(config.backbone_kwargs)
        out_indices = kwargs.pop("out_indices", None)
        self.backbone = Backbone(config.backbone, config.pretrained, config.freeze_backbone, out_indices, **kwargs)

    def forward(self, images: torch.Tensor) -> list[torch.Tensor]:
        return self.backbone.features(images)


class DenseModel(nn.Module):
    """Image -> per-pixel class logits. Build with :func:`rleseg.models.create_model` and a DenseConfig.

    The number of classes comes from the tokenizer, an image (semantic) tokenizer, or a panoptic one with
    ``config.instances`` naming the rule that makes its instances (one more class for ``interiors``). The
    tokenizer is kept only so that the model describes its task like the token model does (its mask size
    is not used: predictions are at the image's resolution).

    Images are (B, 3, H, W) float RGB in [0, 1], H and W divisible by the backbone stride (32 for ResNets).
    """

    max_seq_len = None  # no tokens
    grid_factor = 1  # predictions at the patch's resolution
    refines = False

    def __init__(self, config: DenseConfig, tokenizer: MaskTokenizer):
        super().__init__()
        panoptic = tokenizer.task == "panoptic"
        if tokenizer.task not in ("semantic", "panoptic") or panoptic != (config.instances is not None):
            raise ValueError(f"model.instances {config.instances!r} with a {tokenizer.task} task: the dense model "
                             "predicts semantic label maps (model.instances null) or panoptic ones (model.instances "
                             "'components' or 'interiors')")
        self.config, self.tokenizer = config, tokenizer
        self.instances = instance_rule(config.instances, int(tokenizer.num_classes),
                                       list(tokenizer.thing_classes) if panoptic else [], config.boundary_width)
        self.num_classes = int(tokenizer.num_classes) if self.instances is None else self.instances.outputs
        self.encoder = MultiScaleEncoder(config)
        self.decoder = UNetDecoder(self.encoder.backbone.feature_channels, config.width)
        self.dropout = nn.Dropout(config.dropout)
        self.classifier = nn.Conv2d(self.decoder.out_channels, self.num_classes, 1)
        nn.init.zeros_(self.classifier.bias)

    @property
    def target_keys(self) -> tuple[str, ...]:
        """The batch entries loss() takes (models/protocol.py): the mask, and the instances the
        ``interiors`` rule makes its boundary class from."""
        return ("mask",) if self.instances is None else self.instances.target_keys

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """images (B, 3, H, W) -> logits (B, C, H, W) float (bilinearly upsampled from the finest map)."""
        x = self.decoder(self.encoder(images))  # (B, D0, h0, w0)
        logits = self.classifier(self.dropout(x))  # (B, C, h0, w0)
        return F.interpolate(logits, size=images.shape[-2:], mode="bilinear", align_corners=False)

    def loss(self, images: torch.Tensor, masks: torch.Tensor, *instances: torch.Tensor) -> torch.Tensor:
        """Cross-entropy + Dice (:func:`ce_dice_loss`) against masks (B, H, W) int64 at the images'
        resolution (the instance rule's targets, made from ``instances`` (B, H, W) too for ``interiors``);
        labels outside 0..C-1 (``ignore_index``) are left out. Returns a scalar."""
        if masks.ndim != 3 or masks.shape[0] != images.shape[0] or masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(
                f"masks must be (B, H, W) = {(images.shape[0], *images.shape[-2:])} like the images, "
                f"got {tuple(masks.shape)}"
            )
        labels = masks.long() if self.instances is None else self.instances.targets(masks.long(), *instances)
        return ce_dice_loss(self(images).float(), labels, self.config.label_smoothing)

    @torch.no_grad()
    def predict_logits(self, images: torch.Tensor) -> torch.Tensor:
        """Logits (B, C, H, W) float32 in eval mode (the training mode is restored after)."""
        with eval_mode(self):
            return self(images).float()

    @torch.no_grad()
    def predict(self, images: torch.Tensor, options: DecodingOptions | None = None,
                generator: torch.Generator | None = None) -> Prediction:
        """The argmax of the logits (B, H, W), each pixel's score the softmax probability of its class; no
        tokens. With an instance rule, (semantic, instances) pairs of (H, W) int64 maps (the rule's classes
        made the task's). ``options`` and ``generator`` are the token models' (nothing here is sampled)."""
        probability, labels = self.predict_logits(images).softmax(1).max(1)  # (B, H, W) each
        batch = len(images)
        masks = list(labels.cpu().numpy())
        if self.instances is not None:
            masks = list(zip(*(m.cpu().numpy() for m in self.instances(labels)), strict=True))
        empty, none = [np.zeros(0, np.int64)] * batch, [np.zeros(0, np.float32)] * batch
        return Prediction(masks, empty, none, np.zeros((batch, 2), np.int64),
                          np.zeros(batch, bool), none, list(probability.cpu().numpy()), np.zeros(batch, np.int64))
