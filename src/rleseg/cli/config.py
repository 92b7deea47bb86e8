"""``rleseg config``: the resolved experiment config of a YAML file or shipped config, or the reference of
every key.

A config file may say at a key whose setting it is, in a comment at the end of the key's line or in the
comment lines right above it, starting with a tag of NOTE_TAGS: ``lr: 3.0e-5  # paper: AdamW, lr 3e-5``.
The printed config then starts with a header, read off those notes, that groups the keys by tag (the
paper configs use it to say which settings are the paper's and which rleseg's, and why).
"""

from __future__ import annotations

import argparse
import re
import textwrap
from pathlib import Path

from .common import UserError, add_command, add_overrides, user_errors

# Tag -> the header's heading of its keys; a group lists the keys only (paper) or each key with its note.
NOTE_TAGS = {
    "paper": "The paper's settings (docs/method.md):",
    "rleseg": "rleseg's own settings, and why:",
    "assumption": "Assumptions, where the paper does not say:",
}
_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z_][\w-]*):(?P<rest>.*)$")
_COMMENT = re.compile(r"^ *#\s?(?P<text>.*)$")
_TAGGED = re.compile(rf"^(?P<tag>{'|'.join(NOTE_TAGS)}):\s*(?P<note>.*)$")
_TRAILING = re.compile(r"\s#\s?(?P<text>.*)$")  # a value holding " #" inside quotes would be cut there


def add_config(subparsers) -> None:
    parser = add_command(subparsers, _run_config)
    parser.add_argument("config", type=Path, nargs="?", metavar="CONFIG",
                        help="experiment YAML or the name of a shipped config (see configs/)")
    add_overrides(parser, help="override a config value, e.g. --set train.lr=1e-4 (repeatable)")
    parser.add_argument("--reference", action="store_true",
                        help="print the reference of every key (docs/config.md) instead")


def _run_config(args: argparse.Namespace) -> int:
    """Print the resolved experiment config (every key, defaults filled in) or the config reference.

    With CONFIG: the YAML that `rleseg train CONFIG` with the same --set options would run and save as
    config.yaml, after validation, under a header of the notes at the file's keys (module doc). With
    --reference: every key's type, default and meaning, as in docs/config.md.
    """
    import yaml

    from ..config_reference import reference_markdown
    from ..experiment import build_model_config, config_to_dict, load_config, resolve_config_path

    if args.reference:
        if args.config is not None or args.overrides:
            raise UserError("--reference prints every key's documentation; leave out CONFIG and --set")
        print(reference_markdown(), end="")
        return 0
    if args.config is None:
        raise UserError("give a CONFIG file or shipped config name (see configs/), or --reference")
    with user_errors():
        config = load_config(args.config, args.overrides)
        model = config_to_dict(build_model_config(config))
    resolved = config_to_dict(config)
    # The model section with every field of its preset filled in; the tokenizer and the input size come
    # from the other sections.
    choice = {key: config.model.get(key, default) for key, default in (("preset", "tiny"), ("architecture", "token"))}
    resolved["model"] = {**choice, **{k: v for k, v in model.items() if k not in ("tokenizer", "image_size")}}
    print(notes_header(str(args.config), setting_notes(resolve_config_path(args.config).read_text()),
                       args.overrides), end="")
    print(yaml.safe_dump(resolved, sort_keys=False), end="")
    return 0


def setting_notes(text: str) -> dict[str, tuple[str, str]]:
    """Dotted key -> (tag, note) for each key of a YAML config's ``text`` that carries a note (module doc):
    the comment block right above the key if its first line starts with a tag, then the comment at the end of
    its line if that does; a key with both gets the first one's tag and both texts."""
    notes: dict[str, tuple[str, str]] = {}
    path: list[tuple[int, str]] = []  # (indent, key) of the mapping keys enclosing the current line
    block: list[str] = []
    for line in text.splitlines():
        comment = _COMMENT.match(line)
        if comment:
            block.append(comment["text"].strip())
            continue
        key = _KEY.match(line)
        if key:
            indent = len(key["indent"])
            path = [(i, k) for i, k in path if i < indent] + [(indent, key["key"])]
            trailing = _TRAILING.search(key["rest"])
            pieces = [" ".join(block), trailing["text"].strip() if trailing else ""]
            tagged = [match for match in map(_TAGGED.match, pieces) if match]
            if tagged:
                notes[".".join(k for _, k in path)] = (tagged[0]["tag"], " ".join(m["note"] for m in tagged))
        block = []  # a note belongs to the key right below it: any other line ends the block
    return notes


def notes_header(name: str, notes: dict[str, tuple[str, str]], overrides: list[str] = ()) -> str:
    """YAML comment lines that group the keys of ``notes`` by tag (NOTE_TAGS order); keys that an override
    sets (``section.key=value``), or that hold or lie in one, are listed apart: their notes no longer hold.
    Empty without notes."""
    if not notes:
        return ""
    changed = [override.partition("=")[0].strip() for override in overrides]
    set_here = sorted(key for key in notes
                      if any(c == key or c.startswith(f"{key}.") or key.startswith(f"{c}.") for c in changed))
    lines = [f"Whose settings these are, from the notes at the keys of {name} (keys not named: rleseg's defaults)."]
    for tag, heading in NOTE_TAGS.items():
        keys = [key for key, (t, _) in notes.items() if t == tag and key not in set_here]
        if not keys:
            continue
        lines.append(heading)
        if tag == "paper":
            lines += textwrap.wrap(", ".join(keys), 106, initial_indent="  ", subsequent_indent="  ")
        else:
            for key in keys:
                lines += textwrap.wrap(f"{key}: {notes[key][1]}", 106, initial_indent="  ", subsequent_indent="    ")
    if set_here:
        lines.append(f"Set by --set, so their notes no longer hold: {', '.join(set_here)}")
    return "".join(f"# {line}\n" for line in lines) + "\n"
