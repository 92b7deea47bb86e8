"""Shareable model folders in Hugging Face's ``save_pretrained`` / ``from_pretrained`` layout.

:class:`SharedModel` puts huggingface_hub's ``PyTorchModelHubMixin`` (so ``save_pretrained``,
``from_pretrained`` and, where there is a network, ``push_to_hub``) on a thin wrapper rather than on the
models: a folder must carry what a model does not know (the class names, the image normalisation that
predict applies, the scores), the config's class must pick the model (a ``Pix2Seq.from_pretrained`` could
not load a dense folder), and every file must be read as :func:`load_checkpoint` reads untrusted ones. So
one way builds a model from its saved config, the factory, and ``SharedModel.from_pretrained(folder).model``
is the model that ``load_checkpoint`` gives, its tokenizer with it. A folder holds::

    model.safetensors  the checkpoint as save_checkpoint writes it (weights; config, tokenizer and extra in
                       its header): what loads, so rleseg.load, predict, evaluate and init_from take the folder
    config.json        that header's format, config class, config and extra, for the Hub to show (checked
                       against the header on load: models.checkpoint.model_folder_weights), and ``training``
    README.md          the model card: classes, data, model, scores and the training config
    config.yaml        the run's training config, where known (``rleseg evaluate FOLDER`` reads its data)

Nothing is unpickled: loading never falls back to the mixin's ``pytorch_model.bin``.

    >>> shared = SharedModel(load_checkpoint(path), read_checkpoint_info(path)[1])
    >>> shared.save_pretrained("my-model")             # or shared.push_to_hub("me/my-model")
    >>> model = SharedModel.from_pretrained("my-model").model   # or "me/my-model" from the Hub
"""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import ModelCard, ModelCardData, PyTorchModelHubMixin, hf_hub_download
from torch import nn

from rleseg.atomic import write_json, write_text

from .checkpoint import (
    FOLDER_CONFIG,
    FOLDER_WEIGHTS,
    checkpoint_description,
    load_checkpoint,
    model_folder_weights,
    save_checkpoint,
)

TRAINING_CONFIG = "config.yaml"
# What each kind of metrics.json measured (its "what"), as the card says it.
MEASURED = {"patches": "in-training validation: patches scored at patch resolution",
            "stitched images": "rleseg evaluate: whole images, patches stitched, at full resolution",
            "whole images": "rleseg evaluate: whole images, each one patch"}


class SharedModel(PyTorchModelHubMixin, library_name="rleseg", pipeline_tag="image-segmentation",
                  tags=["rleseg", "segmentation"]):
    """A loaded model (``model``: what :func:`load_checkpoint` gives), its checkpoint's ``extra`` (class names
    and colours, ``normalize``, the step) and ``training``: what is known of how it was trained, written by
    ``rleseg export`` (``experiment``: the run's config.yaml as a dict; ``scores``: :func:`score_summary`
    of each metrics.json)."""

    def __init__(self, model: nn.Module, extra: dict | None = None, training: dict | None = None):
        self.model = model
        self.extra = dict(extra or {})
        self.training = dict(training or {})

    def _save_pretrained(self, save_directory: Path) -> None:
        folder = Path(save_directory)
        save_checkpoint(self.model, folder / FOLDER_WEIGHTS, self.extra)
        write_json(folder / FOLDER_CONFIG, {**checkpoint_description(folder / FOLDER_WEIGHTS),
                                            "training": self.training})
        if self.training.get("experiment"):
            write_text(folder / TRAINING_CONFIG, yaml.safe_dump(self.training["experiment"], sort_keys=False))
        # Written here, not by the mixin, which keeps a README.md already in the folder: the card must be this model's.
        write_text(folder / "README.md", self.model_card())

    @classmethod
    def _from_pretrained(cls, *, model_id: str, revision: str | None, cache_dir: str | Path | None,
                         force_download: bool, local_files_only: bool, token: str | bool | None,
                         map_location: str = "cpu", extra: dict | None = None, training: dict | None = None
                         ) -> SharedModel:
        """A local model folder, or the Hub repository ``model_id`` (its config.json, which ``from_pretrained``
        fetched first, lies beside the weights in the download cache). ``extra`` and ``training`` are
        config.json's, which ``from_pretrained`` passes; its extra is the weights' header's once
        :func:`model_folder_weights` has compared them."""
        folder = Path(model_id)
        if not folder.is_dir():
            folder = Path(hf_hub_download(repo_id=model_id, filename=FOLDER_WEIGHTS, revision=revision,
                                          cache_dir=cache_dir, force_download=force_download, token=token,
                                          local_files_only=local_files_only)).parent
        weights = model_folder_weights(folder)
        return cls(load_checkpoint(weights, map_location), extra, training)

    def generate_model_card(self, *args, **kwargs) -> ModelCard:
        return ModelCard(self.model_card())

    def model_card(self) -> str:
        """README.md: the Hub's metadata, then what the model is, how to use it, its classes, data, scores and
        training config."""
        data = ModelCardData(**self._hub_mixin_info.model_card_data.to_dict())
        config, tokenizer = self.model.config, self.model.tokenizer
        names = self.extra.get("class_names") or [f"class {c}" for c in range(tokenizer.num_classes)]
        experiment = self.training.get("experiment") or {}
        parameters = sum(p.numel() for p in self.model.parameters())
        steps = f", trained {self.extra['step']:,} steps" if "step" in self.extra else ""
        lines = ["---", data.to_yaml(), "---", "",
                 f"# {type(self.model).__name__}: {tokenizer.task} segmentation of {len(names)} classes", "",
                 f"An rleseg model (segmentation by language modelling of run-length-encoded masks): "
                 f"{type(self.model).__name__} on a "
                 f"{config.backbone} backbone, {config.image_size}x{config.image_size} px input, "
                 f"{parameters:,} parameters{steps}. Tokenizer: `{tokenizer!r}`.", "",
                 "## Use", "", "```python", "import rleseg",
                 'predictor = rleseg.load("THIS_FOLDER")   # huggingface_hub.snapshot_download("REPO") gives one',
                 'labels = predictor.predict("image.png")', "```", "",
                 "```bash", "rleseg predict THIS_FOLDER images/ --out predictions/", "```", "",
                 "Images are normalised as in training: " + (
                     f"`{self.extra['normalize']}` (stored in the weights)." if "normalize" in self.extra else
                     "mode `auto`, the default (the weights store none)."), "",
                 "## Classes", "", "| label | name |", "|---|---|",
                 *(f"| {k} | {name} |" for k, name in enumerate(names)), "",
                 "## Data", "", *_data_lines(experiment.get("data")), "",
                 "## Scores", "", *_score_lines(self.training.get("scores") or []), "",
                 "## Training config", ""]
        if experiment:
            lines += [f"The run's config ({TRAINING_CONFIG} in this folder):", "", "```yaml",
                      yaml.safe_dump(experiment, sort_keys=False).rstrip(), "```"]
        else:
            lines += [f"The run's config was not recorded; the model's is in {FOLDER_CONFIG}."]
        return "\n".join(lines) + "\n"


def score_summary(document: dict, source: str) -> dict:
    """The headline of a metrics.json ``document`` (in-training or ``rleseg evaluate``), as a model folder's
    ``training.scores`` and its card hold it: what was scored, how many images, mean Dice and IoU over the
    classes without background (per image and pooled), PQ for panoptic scores, and ``source`` (where the
    scores came from). KeyError or TypeError for a document of another layout."""
    semantic = document["semantic"]
    means = {agg: semantic[agg]["mean_without_background"] for agg in ("per_image", "pooled")}
    summary = {"what": str(document["what"]), "source": source, "num_images": int(document["num_images"]),
               **{f"{score}_{agg}": float(means[agg][score]) for score in ("dice", "iou") for agg in means}}
    if "panoptic" in document:
        summary["pq"] = float(document["panoptic"]["all"]["pq"])
    if "step" in document:
        summary["step"] = int(document["step"])
    return summary


def _data_lines(data: dict | None) -> list[str]:
    if not data:
        return ["The data it was trained on was not recorded with it."]
    patch, root = data.get("patch") or {}, data.get("root")
    return [f"- dataset `{data.get('dataset')}`" + (f", root `{root}`" if root else "") +
            f", splits `{data.get('train_split')}` (training) and `{data.get('val_split')}` (validation)",
            f"- classes: {data.get('num_classes')}, background included",
            f"- patches of {patch.get('patch_size')} px, masks at factor {patch.get('factor')}"]


def _score_lines(scores: list[dict]) -> list[str]:
    if not scores:
        return ["No scores were recorded with this model."]
    panoptic = any("pq" in s for s in scores)
    lines = ["Mean over the classes without background; per image, and pooled over the pixels of all images.", "",
             "| scored | images | Dice per image | Dice pooled | IoU per image | IoU pooled |" + " PQ |" * panoptic,
             "|---|---|---|---|---|---|" + "---|" * panoptic]
    for s in scores:
        what = MEASURED.get(s["what"], s["what"]) + (f", step {s['step']:,}" if "step" in s else "")
        pq = f" {s['pq']:.3f} |" if "pq" in s else " - |"
        lines.append(f"| {what} ({s['source']}) | {s['num_images']} | {s['dice_per_image']:.3f} | "
                     f"{s['dice_pooled']:.3f} | {s['iou_per_image']:.3f} | {s['iou_pooled']:.3f} |" + pq * panoptic)
    return lines
