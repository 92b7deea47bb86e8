"""``rleseg export``: a trained model in a form to share, written atomically as a whole to ``--out``.

:data:`FORMATS` maps ``--format`` to its writer, so another format is one more entry. ``hf`` writes a model
folder in Hugging Face's ``save_pretrained`` layout (:mod:`rleseg.models.hub`): the weights, config.json, a
model card naming the data, the config and the scores, and the run's config.yaml. ``onnx`` writes the model's
parts as ONNX files and a JSON description of them (:mod:`rleseg.onnx_export`), which onnxruntime runs
without rleseg's torch code (:mod:`rleseg.onnx_runtime`). What the card says of the
training comes from the source: a run folder's config.yaml and metrics.json (the in-training validation,
when it scored the exported weights' step), a model folder's own record, and the ``rleseg evaluate``
outputs given as ``scores`` (refused when they scored other weights).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import yaml

from .atomic import atomic_folder, check_output_folder
from .models import (
    SharedModel,
    checkpoint_description,
    is_model_folder,
    load_checkpoint,
    read_checkpoint_info,
    read_json_object,
    resolve_checkpoint,
    score_summary,
)
from .onnx_export import write_onnx_folder
from .onnx_runtime import DESCRIPTION


def export_model(source: str | Path, out: str | Path, format: str = "hf", scores: Sequence[str | Path] = (),
                 overwrite: bool = False) -> dict:
    """Write the model of ``source`` (a run folder, a checkpoint file or a model folder) to ``out`` in
    ``format``; ``scores``: ``rleseg evaluate`` output folders (or their metrics.json) for the model card.
    Returns what was written: ``files`` and the ``scores`` the card holds (:func:`score_summary` each).
    ``overwrite`` replaces only an earlier export. ValueError naming the file for bad input."""
    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; choose one of {', '.join(FORMATS)}")
    weights = resolve_checkpoint(source)
    metrics = [_metrics_file(Path(path)) for path in scores]
    check_output_folder(out, [weights, *metrics])
    out = Path(out)
    exported = is_model_folder(out) or (out / DESCRIPTION).is_file()
    if overwrite and out.is_dir() and any(out.iterdir()) and not exported:
        raise ValueError(f"{out}: not a model folder that rleseg export wrote (no config.json of an rleseg model, no "
                         f"{DESCRIPTION}), so --overwrite does not replace it; choose another --out")
    with atomic_folder(out, overwrite) as tmp:
        written = FORMATS[format](weights, tmp, metrics)
    return written


def write_hf_folder(weights: Path, folder: Path, metrics: Sequence[Path]) -> dict:
    """The model folder of the checkpoint ``weights`` into ``folder`` (``SharedModel.save_pretrained``)."""
    model = load_checkpoint(weights)
    extra = read_checkpoint_info(weights)[1]
    training = training_record(weights, extra)
    training["scores"] = [*training.get("scores", []),
                          *(_evaluate_scores(path, weights) for path in metrics)]
    SharedModel(model, extra, training).save_pretrained(folder)
    return {"files": sorted(p.name for p in folder.iterdir()), "scores": training["scores"]}


FORMATS: dict[str, Callable[[Path, Path, Sequence[Path]], dict]] = {"hf": write_hf_folder, "onnx": write_onnx_folder}


def training_record(weights: Path, extra: dict) -> dict:
    """What the folder of ``weights`` tells of its training: a model folder's own record (its config.json's
    ``training``); a run folder's config.yaml (``experiment``) and, when it scored this step, its metrics.json
    (``scores``); else nothing."""
    home = weights.parent
    if is_model_folder(home):
        record = read_json_object(home / "config.json").get("training")
        return dict(record) if isinstance(record, dict) else {}
    record = {}
    if (home / "config.yaml").is_file():
        record["experiment"] = _yaml(home / "config.yaml")
    metrics = home / "metrics.json"
    if metrics.is_file():
        document = read_json_object(metrics)
        if document.get("step") == extra.get("step"):  # metrics.json is the last validation; best may be older
            record["scores"] = [_summary(document, metrics, "the run's metrics.json")]
    return record


def _evaluate_scores(path: Path, weights: Path) -> dict:
    """The summary of an ``rleseg evaluate`` metrics.json at ``path``, once it is found to have scored the
    weights of ``weights`` (the same config and tensors, wherever the file lies now)."""
    document = read_json_object(path)
    scored = (document.get("source") or {}).get("checkpoint") if isinstance(document, dict) else None
    if not scored:
        raise ValueError(f"{path}: names no checkpoint in its source; expected the metrics.json of rleseg evaluate "
                         "on a model")
    if not Path(scored).is_file():
        raise ValueError(f"{path}: scored {scored}, which no longer exists, so it cannot be checked against "
                         f"{weights}; evaluate the exported model again")
    if not _same_weights(Path(scored), weights):
        raise ValueError(f"{path}: scored {scored}, whose weights differ from {weights}; give the scores of the "
                         "model you export")
    return _summary(document, path, "rleseg evaluate")


def _same_weights(a: Path, b: Path) -> bool:
    from safetensors.torch import load_file

    if a.resolve() == b.resolve():
        return True
    if {k: v for k, v in checkpoint_description(a).items() if k != "extra"} != {
            k: v for k, v in checkpoint_description(b).items() if k != "extra"}:
        return False
    ours, theirs = load_file(a), load_file(b)
    return ours.keys() == theirs.keys() and all(ours[k].equal(theirs[k]) for k in ours)


def _metrics_file(path: Path) -> Path:
    """An evaluate output folder's metrics.json, or the file itself."""
    metrics = path / "metrics.json" if path.is_dir() else path
    if not metrics.is_file():
        raise ValueError(f"{path}: no metrics.json; --scores takes an rleseg evaluate output folder or its "
                         "metrics.json")
    return metrics


def _summary(document: dict, path: Path, source: str) -> dict:
    try:
        return score_summary(document, source)
    except (KeyError, TypeError, ValueError) as err:
        raise ValueError(f"{path}: not a metrics.json of rleseg ({type(err).__name__}: {err})") from None


def _yaml(path: Path) -> dict:
    try:
        document = yaml.safe_load(path.read_text())
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as err:
        raise ValueError(f"{path}: not a readable YAML file ({err})") from None
    if not isinstance(document, dict):
        raise ValueError(f"{path}: must be a YAML mapping (a run's config), got {type(document).__name__}")
    return document
