"""rleseg.models: the Pix2Seq encoder-decoder that reads an image and writes its mask tokens.

    >>> from rleseg.models import create_model
    >>> from rleseg.tokens import Tokenizer
    >>> model = create_model("tiny", Tokenizer((32, 32), num_classes=3))
    >>> loss = model.loss(images, targets)          # images (B, 3, H, W) in [0, 1]; targets (B, T) body+EOS+PAD
    >>> out = model.generate(images, temperature=0)  # out.tokens, out.logprobs, out.masks
"""

from .backbone import Backbone, load_backbone_weights, packaged_weights
from .checkpoint import load_checkpoint, read_checkpoint_info, save_checkpoint
from .generate import Generation
from .pix2seq import PRESETS, ModelConfig, Pix2Seq, create_model, tokenizer_from_dict
from .video import FUSIONS, VideoModelConfig, VideoPix2Seq, create_video_model

__all__ = [
    "FUSIONS",
    "PRESETS",
    "Backbone",
    "Generation",
    "ModelConfig",
    "Pix2Seq",
    "VideoModelConfig",
    "VideoPix2Seq",
    "create_model",
    "create_video_model",
    "load_backbone_weights",
    "load_checkpoint",
    "packaged_weights",
    "read_checkpoint_info",
    "save_checkpoint",
    "tokenizer_from_dict",
]
