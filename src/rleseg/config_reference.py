"""The reference of every experiment config key (docs/config.md), generated from the dataclasses and the
comments written beside their fields, so that it cannot drift from the code: ``rleseg config --reference``
prints it, and a test checks that docs/config.md is current.
"""

from __future__ import annotations

import dataclasses
import inspect
import io
import re
import tokenize

import yaml

from .experiment import DataConfig, ExperimentConfig, OutputConfig, TokenizerConfig
from .models import DenseConfig, ModelConfig, VideoModelConfig
from .models.factory import PRESETS

INTRO = """# Config reference

Every key of an experiment config (`rleseg train CONFIG`), by section, with its type, default and meaning.
Generated from the dataclasses by `rleseg config --reference`; do not edit by hand. Any key can be
overridden on the command line with `--set section.key=value` (values are read as YAML), and
`rleseg config CONFIG --set ...` prints the resolved config. Unknown keys, ill-typed values and values out
of their range are refused with a message naming the key; so are sizes that would take more memory than
`RLESEG_MEMORY_LIMIT_GB` (default 64).
"""


def field_notes(cls: type) -> dict[str, str]:
    """Field name -> the comments written beside it in the class's source: the comment lines right above the
    field, then the comment at the end of its line."""
    source = inspect.getsource(cls)
    comments: dict[int, str] = {}
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type == tokenize.COMMENT:
            comments[token.start[0]] = token.string.lstrip("#").strip()
    lines = source.splitlines()
    notes = {}
    for number, line in enumerate(lines, start=1):
        match = re.match(r"\s+(\w+)\s*:", line)
        if not match or match.group(1) not in {f.name for f in dataclasses.fields(cls)}:
            continue
        above, previous = [], number - 1
        while previous in comments and lines[previous - 1].lstrip().startswith("#"):
            above.insert(0, comments[previous])
            previous -= 1
        notes[match.group(1)] = " ".join([*above, *([comments[number]] if number in comments else [])])
    return notes


def _default(field: dataclasses.Field) -> str:
    if field.default is not dataclasses.MISSING:
        value = field.default
    elif field.default_factory is not dataclasses.MISSING:
        value = field.default_factory()
    else:
        return "(required)"
    if dataclasses.is_dataclass(value):
        return "see below"
    text = yaml.safe_dump(dataclasses.asdict(value) if dataclasses.is_dataclass(value) else _plain(value),
                          default_flow_style=True).strip()
    return text.removesuffix("\n...").removesuffix("...").strip()


def _plain(value):
    return list(value) if isinstance(value, tuple) else value


def _table(prefix: str, cls: type, skip: tuple[str, ...] = ()) -> list[str]:
    notes = field_notes(cls)
    rows = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for field in dataclasses.fields(cls):
        if field.name in skip:
            continue
        kind = str(field.type).replace("|", "\\|")
        note = notes.get(field.name, "").replace("|", "\\|")
        rows.append(f"| `{prefix}{field.name}` | `{kind}` | `{_default(field)}` | {note} |")
    return [*rows, ""]


def reference_markdown() -> str:
    """docs/config.md: every section's keys."""
    lines = [INTRO]
    lines += ["## model", "",
              "`model.preset` picks a preset (" + ", ".join(f"`{name}`" for name in PRESETS) + "; default `tiny`) "
              "and `model.architecture` the model: `token` (default: the Pix2Seq token model, or its video "
              "variant when `tokenizer.task` is `video`) or `dense` (the per-pixel baseline). The other keys "
              "override the preset's fields. `model.image_size` is always the patch size (`data.patch.patch_size`; "
              "a different value is refused). "
              "`model.init_from` (a checkpoint file, or a run folder: its `best.safetensors`) starts a new run "
              "from those weights, with a fresh optimizer and schedule; the tokenizer must be the same and the "
              "weights of the same shapes.",
              "", "### token model (`architecture: token`)", ""]
    lines += _table("model.", ModelConfig, skip=("tokenizer",))
    own = {f.name for f in dataclasses.fields(ModelConfig)}
    video = tuple(f.name for f in dataclasses.fields(VideoModelConfig) if f.name in own)
    lines += ["### video token model (`tokenizer.task: video`), besides the token model's keys", ""]
    lines += _table("model.", VideoModelConfig, skip=video)
    lines += ["### dense model (`architecture: dense`)", "",
              "A dense model writes no tokens, so a dense config that sets a token-model setting to other than "
              "its default (a model key of the token model's only, at other than its preset's value; "
              "`tokenizer.scheme`, `starts`, `extent`, `bands`, `order`, `max_run`; `eval.decoding.*`) is "
              "refused, naming the key. `--set model.architecture=dense` on a token config leaves that config's "
              "token settings out, so it works on any token config. A run folder's config.yaml that an older "
              "rleseg wrote with them still resumes and evaluates.", ""]
    lines += _table("model.", DenseConfig, skip=("tokenizer",))
    sections = [("tokenizer", TokenizerConfig), ("data", DataConfig)]
    for name, cls in sections:
        lines += [f"## {name}", "", *_table(f"{name}.", cls)]
    lines += ["### data.patch", "", *_table("data.patch.", type(DataConfig().patch))]
    lines += ["### data.normalize", "", *_table("data.normalize.", type(DataConfig().normalize))]
    for name, cls in (("train", type(ExperimentConfig().train)), ("eval", type(ExperimentConfig().eval)),
                      ("output", OutputConfig)):
        lines += [f"## {name}", "", *_table(f"{name}.", cls)]
        if name == "eval":
            lines += ["### eval.decoding", "", "The decoding options `rleseg evaluate` and `predict` take as flags "
                      "(`--temperature`, `--top-p`, `--unconstrained`, `--max-len`, `--token-only`).", "",
                      *_table("eval.decoding.", type(ExperimentConfig().eval.decoding))]
    return "\n".join(lines).rstrip() + "\n"
