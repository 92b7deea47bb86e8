"""``rleseg``'s command line (``rleseg --help``; ``python -m rleseg.cli`` under torchrun)."""

from .main import build_parser, main
from .masks import EXAMPLES

__all__ = ["EXAMPLES", "build_parser", "main"]
