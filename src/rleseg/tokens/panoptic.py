"""Panoptic mask tokenizer: instance-grouped binary runs, each group closed by its class token.

Sequence layout (body, then one EOS)::

    group := run run ... run  class        (at least one run)
    run   := start length                  ("1d" starts)
           | major minor length            ("2d" starts: (row, col) for order "C", (col, row) for "F")

Groups come in this order: first every thing instance, in scan order of its first pixel; then every
stuff class present in the mask, once, in increasing class order. The runs of a group are the binary runs
of its mask, sorted by start; runs longer than ``max_run`` are split. Instance ids are not tokens:
identity is the grouping. Background (class 0) is never encoded.

The vocabulary is the image "class" scheme's (classes 1 .. C-1, lengths 1 .. L, starts), with the
panoptic BOS, so one model can share it between semantic and panoptic tasks.

Input rules (``encode``): ``semantic`` holds classes 0 .. C-1; every pixel of a thing class must carry a
non-zero instance id, and an instance id must cover pixels of one thing class only. Instance ids on stuff
and background pixels are ignored (COCO-style maps give stuff segments ids too). Ids need not be
contiguous.

Decoding: thing groups get instance ids 1, 2, ... in group order; stuff groups get instance 0, so the
decoded ``instances`` is 0 wherever the decoded class is stuff or background. ``errors="strict"`` raises on
any malformation: a token of the wrong type, a group without runs, a partial run, runs that are unsorted
or overlap inside a group, runs of different groups that overlap, a stuff class closing two groups, or
runs left without a closing class token before EOS. ``errors="ignore"`` never raises on a 1-D integer
sequence: it keeps every well-typed, in-range run, gives it to the next class token, drops runs that no
class token closes and class tokens that close no run, and paints groups in sequence order (a later
group wins where groups overlap).

    >>> import numpy as np
    >>> tok = PanopticTokenizer(mask_size=(2, 4), num_classes=3, thing_classes=[1])
    >>> semantic = np.array([[1, 1, 0, 2], [1, 0, 1, 2]])
    >>> instances = np.array([[5, 5, 0, 0], [5, 0, 7, 0]])
    >>> # (start, length): instance 5 (0, 2) (4, 1) class 1 | instance 7 (6, 1) class 1 | stuff (3, 1) (7, 1) class 2
    >>> tok.encode(semantic, instances).tolist()
    [11, 8, 15, 7, 5, 17, 7, 5, 14, 7, 18, 7, 6, 1]
    >>> semantic2, instances2 = tok.decode(tok.encode(semantic, instances))
    >>> instances2.tolist()
    [[1, 1, 0, 0], [1, 0, 2, 0]]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .runs import Runs, check_label_map, flat_runs, label_dtype, paint_runs
from .tokenizer import Tokenizer, check_absolute_starts, parse_tokens, split_at_eos
from .vocab import EOS


@dataclass(frozen=True)
class PanopticGroup:
    """One decoded group: an instance (thing class) or a stuff region.

    Attributes:
        label: the class of the closing class token.
        instance: its id in the decoded instance map (1, 2, ... for things in order; 0 for stuff).
        start, stop: token positions in the sequence: the group's first run token, and one past its
            class token (so ``tokens[stop - 1]`` is the class token whose probability scores it).
        runs: its runs, flat starts in the tokenizer's scan order; ``runs.classes`` all equal ``label``.
    """

    label: int
    instance: int
    start: int
    stop: int
    runs: Runs

    @property
    def class_position(self) -> int:
        return self.stop - 1


class _Parsed(NamedTuple):
    """A decoded sequence as arrays: runs in sequence order, and per kept group its class, instance id
    (0 for stuff) and token span."""

    starts: np.ndarray
    lengths: np.ndarray
    run_group: np.ndarray  # index of each run's group
    labels: np.ndarray
    instances: np.ndarray
    group_start: np.ndarray
    group_stop: np.ndarray


class PanopticTokenizer:
    """Turns (semantic, instances) label maps into instance-grouped run tokens and back.

    Args:
        mask_size: (H, W) of the (already subsampled) maps.
        num_classes: C, background 0 included.
        thing_classes: the classes (in 1 .. C-1) whose pixels form instances; the other foreground
            classes are stuff.
        starts, order, max_run: as for :class:`Tokenizer`, starts "1d" or "2d" only.

    Attributes:
        vocab: the token layout (the image "class" scheme's); ``bos`` is its panoptic BOS.
        slots: range name per token of one run (the class token that closes a group is extra).
    """

    task = "panoptic"

    def __init__(
        self,
        mask_size: tuple[int, int],
        num_classes: int,
        thing_classes,
        starts: str = "1d",
        order: str = "C",
        max_run: int | None = None,
    ):
        check_absolute_starts(starts, "panoptic")
        self.image = Tokenizer(mask_size, num_classes, "class", starts, order, max_run)
        self.mask_size, self.num_classes = self.image.mask_size, self.image.num_classes
        self.starts, self.order, self.max_run = starts, order, self.image.max_run
        self.grid, self.num_pixels, self.vocab = self.image.grid, self.image.num_pixels, self.image.vocab
        things = np.asarray(list(thing_classes), dtype=np.int64)
        if things.size and (things.min() < 1 or things.max() >= num_classes):
            raise ValueError(f"thing_classes must lie in 1 .. {num_classes - 1}, got {things.tolist()}")
        if np.unique(things).size != things.size:
            raise ValueError(f"thing_classes holds a class twice: {things.tolist()}")
        self.thing_classes = tuple(sorted(int(c) for c in things))
        self.is_thing = np.zeros(self.num_classes, dtype=bool)
        self.is_thing[things] = True
        self.stuff_classes = tuple(int(c) for c in np.flatnonzero(~self.is_thing[1:]) + 1)
        self.slots = ("start", "length") if starts == "1d" else ("coord", "coord", "length")

    @property
    def tokens_per_run(self) -> int:
        return len(self.slots)

    @property
    def bos(self) -> int:
        return self.vocab.bos[self.task]

    # ----------------------------------------------------------------------------- encode
    def check_maps(self, semantic: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        semantic = check_label_map(semantic, name="semantic")
        instances = check_label_map(instances, name="instances")
        if semantic.shape != self.mask_size or instances.shape != self.mask_size:
            raise ValueError(
                f"semantic {semantic.shape} and instances {instances.shape} must both have the tokenizer's "
                f"mask_size {self.mask_size}"
            )
        if semantic.size and int(semantic.max()) >= self.num_classes:
            raise ValueError(
                f"semantic holds label {int(semantic.max())}, expected labels < num_classes={self.num_classes}"
            )
        return semantic, instances

    def encode(self, semantic: np.ndarray, instances: np.ndarray) -> np.ndarray:
        """(H, W) classes and (H, W) instance ids -> int64 tokens: the groups followed by one EOS."""
        semantic, instances = self.check_maps(semantic, instances)
        sem = semantic.ravel(order=self.order).astype(np.int64)
        inst = instances.ravel(order=self.order).astype(np.int64)
        group_map, group_class, num_things = self._group_map(sem, inst)
        runs = flat_runs(group_map, self.max_run)  # runs.classes: group key of each run
        # Group order: things by first pixel (a key's first run holds it, runs being sorted by start),
        # then stuff in class order, which is the order of their keys, all above num_things.
        keys, first_run = np.unique(runs.classes, return_index=True)
        rank = np.zeros(len(group_class), dtype=np.int64)
        rank[keys] = np.where(keys <= num_things, runs.starts[first_run], self.num_pixels + keys)
        order = np.lexsort((runs.starts, rank[runs.classes]))
        runs = Runs(runs.starts[order], runs.lengths[order], runs.classes[order])
        body = self._run_tokens(runs).reshape(-1)
        last_run = np.flatnonzero(np.diff(runs.classes, append=-1))  # the last run of each group
        class_tokens = self.vocab["class"].token(group_class[runs.classes[last_run]])
        body = np.insert(body, (last_run + 1) * self.tokens_per_run, class_tokens)
        return np.append(body, EOS).astype(np.int64)

    def _group_map(self, sem: np.ndarray, inst: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
        """Flat map of group keys (0 none, 1..K thing instances, then one key per stuff class), the class
        of each key (index 0 unused) and K."""
        thing = self.is_thing[sem]
        orphan = np.flatnonzero(thing & (inst == 0))
        if orphan.size:
            row, col = self._pixel(orphan[0])
            raise ValueError(
                f"{orphan.size} pixel(s) of thing classes have instance id 0 (first at row {row}, col {col}, "
                f"class {sem[orphan[0]]}); every thing pixel needs an instance id (or set its class to 0)"
            )
        ids, key = np.unique(inst[thing], return_inverse=True)
        classes = sem[thing]
        low = np.full(ids.size, self.num_classes, dtype=np.int64)
        high = np.zeros(ids.size, dtype=np.int64)
        np.minimum.at(low, key, classes)
        np.maximum.at(high, key, classes)
        mixed = np.flatnonzero(low != high)
        if mixed.size:
            i = int(mixed[0])
            raise ValueError(
                f"instance id {ids[i]} covers pixels of classes {low[i]} and {high[i]}; an instance must "
                f"be of one thing class"
            )
        stuff = np.asarray(self.stuff_classes, dtype=np.int64)
        stuff_key = np.zeros(self.num_classes, dtype=np.int64)
        stuff_key[stuff] = ids.size + 1 + np.arange(stuff.size)
        group_map = stuff_key[sem]
        group_map[thing] = key + 1
        return group_map, np.concatenate(([0], low, stuff)), int(ids.size)

    def _pixel(self, flat_index: int) -> tuple[int, int]:
        major, minor = divmod(int(flat_index), self.grid[1])
        return (major, minor) if self.order == "C" else (minor, major)

    def _run_tokens(self, runs: Runs) -> np.ndarray:
        """(R, tokens_per_run) tokens of runs without their class."""
        if self.starts == "1d":
            columns = [self.vocab["start"].token(runs.starts)]
        else:
            major, minor = np.divmod(runs.starts, self.grid[1])
            columns = [self.vocab["coord"].token(major), self.vocab["coord"].token(minor)]
        columns.append(self.vocab["length"].token(runs.lengths))
        return np.stack(columns, axis=1)

    # ----------------------------------------------------------------------------- decode
    def decode(self, tokens, errors: str = "strict") -> tuple[np.ndarray, np.ndarray]:
        """Tokens -> (semantic (H, W) uint8/uint16 classes, instances (H, W) int32 ids, 0 = none)."""
        parsed = self._parse(tokens, errors)
        starts, lengths = parsed.starts, parsed.lengths
        labels, ids = parsed.labels[parsed.run_group], parsed.instances[parsed.run_group]
        by_start = np.argsort(starts, kind="stable")
        if np.all(starts[by_start[1:]] >= (starts + lengths)[by_start[:-1]]):
            # Disjoint runs paint the same in any order, and sorted ones paint much faster.
            starts, lengths, labels, ids = starts[by_start], lengths[by_start], labels[by_start], ids[by_start]
        semantic = paint_runs(Runs(starts, lengths, labels), self.num_pixels, label_dtype(self.num_classes))
        instances = paint_runs(Runs(starts, lengths, ids), self.num_pixels, np.int32)
        return (
            semantic.reshape(self.mask_size, order=self.order),
            instances.reshape(self.mask_size, order=self.order),
        )

    def decode_groups(self, tokens, errors: str = "strict") -> list[PanopticGroup]:
        """Tokens -> the groups in sequence order, each with its class, instance id, token span and runs."""
        parsed = self._parse(tokens, errors)
        bounds = np.searchsorted(parsed.run_group, np.arange(parsed.labels.size + 1))
        return [
            PanopticGroup(
                label=int(label),
                instance=int(instance),
                start=int(start),
                stop=int(stop),
                runs=Runs(parsed.starts[first:last], parsed.lengths[first:last],
                          np.full(last - first, label, dtype=np.int64)),
            )
            for label, instance, start, stop, first, last in zip(
                parsed.labels, parsed.instances, parsed.group_start, parsed.group_stop, bounds[:-1], bounds[1:],
                strict=True,
            )
        ]

    def _parse(self, tokens, errors: str) -> _Parsed:
        if errors not in ("strict", "ignore"):
            raise ValueError(f"errors must be 'strict' or 'ignore', got {errors!r}")
        strict = errors == "strict"
        body = split_at_eos(parse_tokens(tokens), strict)
        parse = self._parse_strict if strict else self._parse_lenient
        run_pos, run_group, class_pos = parse(body)
        run_tokens = body[run_pos[:, None] + np.arange(self.tokens_per_run)]
        starts, lengths, in_grid = self._run_values(run_tokens)
        valid = in_grid & (starts + lengths <= self.num_pixels)
        if strict:
            self._check_runs(starts, lengths, run_pos, run_group, in_grid, valid)
        else:
            run_pos, run_group, starts, lengths = run_pos[valid], run_group[valid], starts[valid], lengths[valid]
        labels = self.vocab["class"].value(body[class_pos])
        if strict:
            self._check_stuff_once(labels, class_pos)
        # Lenient mode drops the groups left without runs; number the kept ones 0, 1, ...
        kept, run_group = np.unique(run_group, return_inverse=True)
        is_thing = self.is_thing[labels[kept]]
        first_run = np.searchsorted(run_group, np.arange(kept.size))
        return _Parsed(
            starts=starts,
            lengths=lengths,
            run_group=run_group.reshape(-1),
            labels=labels[kept],
            instances=np.where(is_thing, np.cumsum(is_thing), 0),
            group_start=run_pos[first_run],
            group_stop=class_pos[kept] + 1,
        )

    def _run_slot_kinds(self) -> np.ndarray:
        return np.array([self.vocab.names.index(name) for name in self.slots])

    def _parse_strict(self, body: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position of each run's first token, group index of each run, position of each class token)."""
        k = self.tokens_per_run
        kinds = self.vocab.kind(body)
        is_class = kinds == self.vocab.names.index("class")
        class_pos = np.flatnonzero(is_class)
        group = np.cumsum(is_class) - is_class  # group index of every token, its class token included
        group_first = np.concatenate(([0], class_pos + 1))
        offset = np.arange(body.size) - group_first[group]
        expected = self._run_slot_kinds()[offset % k]
        bad_type = ~is_class & (kinds != expected)
        bad_close = is_class & ((offset % k != 0) | (offset == 0))
        bad = np.flatnonzero(bad_type | bad_close)
        if bad.size:
            pos = int(bad[0])
            if bad_type[pos]:
                raise ValueError(
                    f"token {body[pos]} at position {pos} is a {self.vocab.describe(body[pos])}, expected a "
                    f"{self.slots[offset[pos] % k]} token (slot {offset[pos] % k} of a run in group {group[pos]})"
                )
            what = "a group without runs" if offset[pos] == 0 else f"a partial run ({offset[pos] % k} of {k} tokens)"
            raise ValueError(f"class token {body[pos]} at position {pos} closes {what}")
        tail = body.size - group_first[-1]
        if tail:
            raise ValueError(
                f"{tail} token(s) from position {group_first[-1]} before EOS are not closed by a class token; "
                f"a group ends with its class token"
            )
        run_pos = np.flatnonzero(~is_class & (offset % k == 0))
        return run_pos, group[run_pos], class_pos

    def _parse_lenient(self, body: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        k = self.tokens_per_run
        kinds = self.vocab.kind(body)
        class_pos = np.flatnonzero(kinds == self.vocab.names.index("class"))
        if body.size < k:
            run_pos = np.zeros(0, dtype=np.int64)
        else:
            # Windows matching the run pattern never overlap: "length" occurs only in a run's last slot.
            windows = np.lib.stride_tricks.sliding_window_view(kinds, k)
            run_pos = np.flatnonzero(np.all(windows == self._run_slot_kinds(), axis=1))
        run_group = np.searchsorted(class_pos, run_pos)  # index of the first class token after the run
        closed = run_group < class_pos.size
        return run_pos[closed], run_group[closed], class_pos

    def _run_values(self, run_tokens: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        if self.starts == "1d":
            starts = self.vocab["start"].value(run_tokens[:, 0])
            in_grid = np.ones(len(run_tokens), dtype=bool)
        else:
            major, minor = (self.vocab["coord"].value(run_tokens[:, i]) for i in (0, 1))
            starts = major * self.grid[1] + minor
            in_grid = (major < self.grid[0]) & (minor < self.grid[1])
        return starts, self.vocab["length"].value(run_tokens[:, -1]), in_grid

    def _check_runs(self, starts, lengths, run_pos, run_group, in_grid, valid) -> None:
        bad = np.flatnonzero(~valid)
        if bad.size:
            i = int(bad[0])
            where = (
                f"starts outside the {self.grid[0]}x{self.grid[1]} scan grid" if not in_grid[i]
                else f"with start {starts[i]} and length {lengths[i]} ends past the mask of {self.num_pixels} pixels"
            )
            raise ValueError(f"run at position {run_pos[i]} {where}")
        ends = starts + lengths
        same_group = run_group[1:] == run_group[:-1]
        unsorted = np.flatnonzero(same_group & (starts[1:] < ends[:-1]))
        if unsorted.size:
            i = int(unsorted[0]) + 1
            raise ValueError(
                f"run at position {run_pos[i]} starts at {starts[i]}, before the end {ends[i - 1]} of the previous "
                f"run of its group; runs of a group must be sorted and disjoint"
            )
        by_start = np.argsort(starts, kind="stable")
        clash = np.flatnonzero(starts[by_start[1:]] < ends[by_start[:-1]])
        if clash.size:
            a, b = sorted((int(by_start[clash[0]]), int(by_start[clash[0] + 1])))
            raise ValueError(
                f"runs at positions {run_pos[a]} (group {run_group[a]}) and {run_pos[b]} (group {run_group[b]}) "
                f"overlap; groups must not share pixels"
            )

    def _check_stuff_once(self, labels: np.ndarray, class_pos: np.ndarray) -> None:
        stuff = np.flatnonzero(~self.is_thing[labels])
        seen, first = np.unique(labels[stuff], return_index=True)
        if seen.size < stuff.size:
            again = np.setdiff1d(np.arange(stuff.size), first)[0]
            raise ValueError(
                f"stuff class {labels[stuff[again]]} closes a second group at position {class_pos[stuff[again]]}; "
                f"each stuff class forms one group"
            )

    # ----------------------------------------------------------------------------- misc
    def grammar(self, batch_size: int):
        """A batch of decoding states that yields the tokens allowed next (constrained decoding)."""
        from .panoptic_grammar import PanopticGrammar

        return PanopticGrammar(self, batch_size)

    def to_dict(self) -> dict:
        return {
            "type": "panoptic",
            "mask_size": list(self.mask_size),
            "num_classes": self.num_classes,
            "thing_classes": list(self.thing_classes),
            "starts": self.starts,
            "order": self.order,
            "max_run": self.max_run,
            "vocab": self.vocab.to_dict(),
        }

    @classmethod
    def from_dict(cls, data: dict) -> PanopticTokenizer:
        if data.get("type") != "panoptic":
            raise ValueError(f"not a panoptic tokenizer: type {data.get('type')!r}")
        tokenizer = cls(
            tuple(data["mask_size"]), data["num_classes"], data["thing_classes"], data["starts"], data["order"],
            data["max_run"],
        )
        if "vocab" in data and data["vocab"] != tokenizer.vocab.to_dict():
            raise ValueError("the stored vocabulary layout differs from the one these arguments build")
        return tokenizer

    def __repr__(self) -> str:
        return (
            f"PanopticTokenizer(mask_size={self.mask_size}, num_classes={self.num_classes}, "
            f"thing_classes={list(self.thing_classes)}, starts={self.starts!r}, order={self.order!r}, "
            f"max_run={self.max_run}, vocab_size={self.vocab.size})"
        )
