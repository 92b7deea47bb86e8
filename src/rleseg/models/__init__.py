"""rleseg.models: the Pix2Seq encoder-decoder that reads an image and writes its mask tokens, its video
variant, and the dense per-pixel baseline; one ``create_model`` builds them all.

    >>> from rleseg.models import create_model
    >>> from rleseg.tokens import Tokenizer
    >>> tokenizer = Tokenizer((32, 32), num_classes=3)
    >>> model = create_model("tiny", tokenizer)
    >>> loss = model.loss(images, targets)          # images (B, 3, H, W) in [0, 1]; targets (B, T) body+EOS+PAD
    >>> out = model.generate(images, temperature=0)  # out.tokens (B, T), out.logprobs (B, T)
    >>> masks = [tokenizer.decode(row, errors="strict") for row in out.tokens.numpy()]
"""

from .backbone import Backbone, load_backbone_weights, packaged_weights
from .checkpoint import checkpoint_classes, load_checkpoint, load_weights_into, read_checkpoint_info, save_checkpoint
from .dense import DenseConfig, DenseModel
from .factory import DENSE_PRESETS, MODELS, PRESETS, AnyModelConfig, create_model
from .generate import Generation
from .pix2seq import ModelConfig, Pix2Seq
from .video import FUSIONS, VideoModelConfig, VideoPix2Seq

__all__ = [
    "DENSE_PRESETS",
    "FUSIONS",
    "MODELS",
    "PRESETS",
    "AnyModelConfig",
    "Backbone",
    "DenseConfig",
    "DenseModel",
    "Generation",
    "ModelConfig",
    "Pix2Seq",
    "VideoModelConfig",
    "VideoPix2Seq",
    "checkpoint_classes",
    "create_model",
    "load_backbone_weights",
    "load_checkpoint",
    "load_weights_into",
    "packaged_weights",
    "read_checkpoint_info",
    "save_checkpoint",
]
