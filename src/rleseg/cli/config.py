"""``rleseg config``: the resolved experiment config of a YAML file or shipped config, or the reference of
every key."""

from __future__ import annotations

import argparse
from pathlib import Path

from .common import UserError, add_command, add_overrides, user_errors


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
    config.yaml, after validation. With --reference: every key's type, default and meaning, as in
    docs/config.md.
    """
    import yaml

    from ..config_reference import reference_markdown
    from ..experiment import build_model_config, config_to_dict, load_config

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
    print(yaml.safe_dump(resolved, sort_keys=False), end="")
    return 0
