"""rleseg.models: the Pix2Seq encoder-decoder that reads an image and writes its mask tokens, its video
variant, and the dense per-pixel baseline; one ``create_model`` builds them all.

    >>> from rleseg.models import create_model
    >>> from rleseg.tokens import Tokenizer
    >>> tokenizer = Tokenizer((32, 32), num_classes=3)
    >>> model = create_model("tiny", tokenizer)
    >>> loss = model.loss(images, targets)          # images (B, 3, H, W) in [0, 1]; targets (B, T) body+EOS+PAD
    >>> prediction = model.predict(images)          # .masks, .tokens, .run_scores, .score_maps (protocol.py)
    >>> out = model.generate(images, DecodingOptions(temperature=0))  # out.tokens (B, T), out.logprobs (B, T)
"""

from .backbone import Backbone, load_backbone_weights, packaged_weights
from .checkpoint import (
    checkpoint_classes,
    checkpoint_description,
    is_model_folder,
    load_checkpoint,
    load_weights_into,
    model_folder_weights,
    read_checkpoint_info,
    read_json_object,
    renamed_weights,
    resolve_checkpoint,
    save_checkpoint,
)
from .config import ModelConfig
from .dense import DenseConfig, DenseModel
from .factory import DENSE_PRESETS, MODELS, PRESETS, AnyModelConfig, create_model
from .generate import DecodingOptions, Generation, resolve_earliest_instance
from .hub import SharedModel, score_summary
from .pix2seq import Pix2Seq
from .protocol import Prediction, SegmentationModel, output_factor
from .video import FUSIONS, VideoModelConfig, VideoPix2Seq

__all__ = [
    "DENSE_PRESETS",
    "FUSIONS",
    "MODELS",
    "PRESETS",
    "AnyModelConfig",
    "Backbone",
    "DecodingOptions",
    "DenseConfig",
    "DenseModel",
    "Generation",
    "ModelConfig",
    "Pix2Seq",
    "Prediction",
    "SegmentationModel",
    "SharedModel",
    "VideoModelConfig",
    "VideoPix2Seq",
    "checkpoint_classes",
    "checkpoint_description",
    "create_model",
    "is_model_folder",
    "load_backbone_weights",
    "load_checkpoint",
    "load_weights_into",
    "model_folder_weights",
    "output_factor",
    "packaged_weights",
    "read_checkpoint_info",
    "read_json_object",
    "renamed_weights",
    "resolve_checkpoint",
    "resolve_earliest_instance",
    "save_checkpoint",
    "score_summary",
]
