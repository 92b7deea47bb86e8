"""A tokenizer as plain data (what a checkpoint stores): its type, its constructor arguments, its layout."""

from __future__ import annotations

import inspect
from typing import ClassVar, Self

from .vocab import Vocab


class StoredArguments:
    """``to_dict``, ``from_dict`` and ``repr`` of a tokenizer class from the constructor arguments it
    names in ``ARGUMENTS``, each kept as an attribute of the same name, and its ``KIND`` ("image",
    "panoptic" or "video"), the dict's "type"."""

    KIND: ClassVar[str]
    ARGUMENTS: ClassVar[tuple[str, ...]]
    vocab: Vocab

    @property
    def prompts(self) -> tuple[int, ...]:
        """The decoder's first input token of each sequence ``encode`` writes: the task's BOS, one sequence."""
        return (self.bos,)

    def to_dict(self) -> dict:
        """{"type": KIND, the constructor arguments (tuples as lists), "vocab": the layout}."""
        arguments = {name: getattr(self, name) for name in self.ARGUMENTS}
        arguments = {name: list(value) if isinstance(value, tuple) else value for name, value in arguments.items()}
        return {"type": self.KIND, **arguments, "vocab": self.vocab.to_dict()}

    @classmethod
    def from_dict(cls, data: dict) -> Self:
        """The tokenizer ``to_dict`` wrote; arguments it lacks take their defaults. ValueError if ``data``
        is of another type (none: "image", from before types) or its vocabulary differs from the one the
        arguments build."""
        article = "an" if cls.KIND == "image" else "a"
        if data.get("type", "image") != cls.KIND:
            raise ValueError(f"not {article} {cls.KIND} tokenizer: type {data.get('type')!r}")
        unknown = sorted(set(data) - {"type", "vocab", *cls.ARGUMENTS})
        if unknown:
            raise ValueError(f"unknown key {unknown[0]!r}; {article} {cls.KIND} tokenizer has "
                             f"{', '.join(cls.ARGUMENTS)}")
        annotations = {name: str(p.annotation) for name, p in inspect.signature(cls.__init__).parameters.items()}
        for name in cls.ARGUMENTS:
            if name in data:
                _check_kind(name, data[name], annotations.get(name, ""))
        tokenizer = cls(**{name: data[name] for name in cls.ARGUMENTS if name in data})
        if "vocab" in data and data["vocab"] != tokenizer.vocab.to_dict():
            raise ValueError("the stored vocabulary layout differs from the one these arguments build")
        return tokenizer

    def __repr__(self) -> str:
        arguments = ", ".join(f"{name}={getattr(self, name)!r}" for name in self.ARGUMENTS)
        return f"{type(self).__name__}({arguments}, vocab_size={self.vocab.size})"


def _check_kind(name: str, value: object, annotation: str) -> None:
    """ValueError for a stored argument holding a number of a kind its annotation does not name: a
    ``num_classes`` of 3.5, a ``max_run`` of true (JSON has no int type of its own to stop them)."""
    values = value if isinstance(value, list | tuple) else [value]
    for item in values:
        if isinstance(item, bool) and "bool" not in annotation:
            raise ValueError(f"{name} must be {annotation}, got {value!r}")
        if isinstance(item, float) and "float" not in annotation:
            raise ValueError(f"{name} must be {annotation}, got {value!r}")
