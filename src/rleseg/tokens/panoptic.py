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

from collections.abc import Iterable
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np

from .panoptic_grammar import PanopticGrammar
from .run_format import RunFormat
from .runs import Runs, check_label_map, flat_runs, label_dtype, paint_runs
from .stored import StoredArguments
from .tokenizer import Tokenizer, check_starts, read_body
from .vocab import EOS, MAX_VOCAB


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
    """A decoded sequence as arrays: runs in sequence order (each run's class its group's), and per kept
    group its class, instance id (0 for stuff) and token span."""

    runs: Runs
    run_group: np.ndarray  # index of each run's group
    run_pos: np.ndarray  # position of each run's first token
    labels: np.ndarray
    instances: np.ndarray
    group_start: np.ndarray
    group_stop: np.ndarray


class PanopticTokenizer(StoredArguments):
    """Turns (semantic, instances) label maps into instance-grouped run tokens and back.

    Args:
        mask_size: (H, W) of the (already subsampled) maps.
        num_classes: C, background 0 included.
        thing_classes: the classes (in 1 .. C-1) whose pixels form instances; the other foreground
            classes are stuff.
        starts, order, max_run, max_vocab: as for :class:`Tokenizer`.

    Attributes:
        vocab: the token layout (the image "class" scheme's); ``bos`` is its panoptic BOS.
        run_format: how one run is written as tokens (binary runs: start, length); ``slots`` and
            ``tokens_per_run`` are its (the class token that closes a group is extra).
    """

    task = "panoptic"
    KIND, ARGUMENTS = "panoptic", ("mask_size", "num_classes", "thing_classes", "starts", "order", "max_run")

    def __init__(self, mask_size: tuple[int, int], num_classes: int, thing_classes: Iterable[int],
                 starts: str = "1d", order: str = "C", max_run: int | None = None, max_vocab: int = MAX_VOCAB):
        check_starts(starts, "panoptic")
        self.image = Tokenizer(mask_size, num_classes, "class", starts, order, max_run, max_vocab=max_vocab)
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
        # Binary runs (start, length): a group's class token stands after its runs.
        self.run_format = RunFormat(self.vocab, starts, "binary", self.grid, self.max_run)
        self.slots, self.tokens_per_run = self.run_format.slots, self.run_format.tokens_per_run

    @property
    def bos(self) -> int:
        return self.vocab.bos[self.task]

    # ----------------------------------------------------------------------------- encode
    def check_maps(self, semantic: np.ndarray, instances: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        semantic = check_label_map(semantic, name="semantic", num_classes=self.num_classes)
        instances = check_label_map(instances, name="instances")
        if semantic.shape != self.mask_size or instances.shape != self.mask_size:
            raise ValueError(
                f"semantic {semantic.shape} and instances {instances.shape} must both have the tokenizer's "
                f"mask_size {self.mask_size}"
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
        runs = runs[order]
        body = self.run_format.encode(runs).reshape(-1)
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

    # ----------------------------------------------------------------------------- decode
    def decode(self, tokens, errors: str = "strict") -> tuple[np.ndarray, np.ndarray]:
        """Tokens -> (semantic (H, W) uint8/uint16 classes, instances (H, W) int32 ids, 0 = none)."""
        parsed = self._parse(tokens, errors)
        runs, ids = parsed.runs, parsed.instances[parsed.run_group]
        by_start = np.argsort(runs.starts, kind="stable")
        if np.all(runs.starts[by_start[1:]] >= runs.ends[by_start[:-1]]):
            # Disjoint runs paint the same in any order, and sorted ones paint much faster.
            runs, ids = runs[by_start], ids[by_start]
        semantic = paint_runs(runs, self.num_pixels, label_dtype(self.num_classes))
        instances = paint_runs(Runs(runs.starts, runs.lengths, ids), self.num_pixels, np.int32)
        return (
            semantic.reshape(self.mask_size, order=self.order),
            instances.reshape(self.mask_size, order=self.order),
        )

    def decode_runs(self, tokens, errors: str = "strict") -> Runs:
        """Tokens -> the runs of all groups in sequence order, each run's class its group's (flat starts
        in this tokenizer's order). ``errors`` as for :meth:`decode`."""
        return self._parse(tokens, errors).runs

    def decode_runs_at(self, tokens, errors: str = "strict") -> tuple[Runs, np.ndarray]:
        """(:meth:`decode_runs`, (R, tokens_per_run + 1) the positions in ``tokens`` of each run's tokens
        and, last, of its group's class token): where per-run scores read the log-probabilities."""
        parsed = self._parse(tokens, errors)
        own = parsed.run_pos[:, None] + np.arange(self.tokens_per_run)
        return parsed.runs, np.concatenate([own, parsed.group_stop[parsed.run_group, None] - 1], axis=1)

    def count_runs(self, tokens, errors: str = "ignore") -> tuple[int, int]:
        """(runs a generated sequence stands for, runs ``decode(errors="ignore")`` keeps): as
        :meth:`Tokenizer.count_runs`, class tokens left out."""
        body, strict = read_body(tokens, errors)
        written = -(-(body.size - int(self.vocab["class"].contains(body).sum())) // self.tokens_per_run)
        return written, written if strict else len(self.decode_runs(tokens, errors="ignore"))

    def decode_groups(self, tokens, errors: str = "strict") -> list[PanopticGroup]:
        """Tokens -> the groups in sequence order, each with its class, instance id, token span and runs."""
        parsed = self._parse(tokens, errors)
        bounds = np.searchsorted(parsed.run_group, np.arange(parsed.labels.size + 1))
        return [
            PanopticGroup(int(label), int(instance), int(start), int(stop), parsed.runs[first:last])
            for label, instance, start, stop, first, last in zip(
                parsed.labels, parsed.instances, parsed.group_start, parsed.group_stop, bounds[:-1], bounds[1:],
                strict=True,
            )
        ]

    def _parse(self, tokens, errors: str) -> _Parsed:
        body, strict = read_body(tokens, errors)
        parse = self._parse_strict if strict else self._parse_lenient
        run_pos, run_group, class_pos = parse(body)
        runs, in_grid = self.run_format.decode(body[run_pos[:, None] + np.arange(self.tokens_per_run)])
        if strict:
            self.run_format.check(runs, in_grid, run_pos, run_group)
            self._check_disjoint(runs, run_pos, run_group)
        else:
            keep = self.run_format.in_mask(runs, in_grid)
            runs, run_pos, run_group = runs[keep], run_pos[keep], run_group[keep]
        labels = self.vocab["class"].value(body[class_pos])
        if strict:
            self._check_stuff_once(labels, class_pos)
        # Lenient mode drops the groups left without runs; number the kept ones 0, 1, ...
        kept, run_group = np.unique(run_group, return_inverse=True)
        run_group = run_group.reshape(-1)
        is_thing = self.is_thing[labels[kept]]
        first_run = np.searchsorted(run_group, np.arange(kept.size))
        return _Parsed(
            runs=Runs(runs.starts, runs.lengths, labels[kept][run_group]),
            run_group=run_group,
            run_pos=run_pos,
            labels=labels[kept],
            instances=np.where(is_thing, np.cumsum(is_thing), 0),
            group_start=run_pos[first_run],
            group_stop=class_pos[kept] + 1,
        )

    def _parse_strict(self, body: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(position of each run's first token, group index of each run, position of each class token)."""
        k = self.tokens_per_run
        kinds = self.vocab.kind(body)
        is_class = kinds == self.vocab.names.index("class")
        class_pos = np.flatnonzero(is_class)
        group = np.cumsum(is_class) - is_class  # group index of every token, its class token included
        group_first = np.concatenate(([0], class_pos + 1))
        offset = np.arange(body.size) - group_first[group]
        expected = self.run_format.kinds[offset % k]
        bad_type = ~is_class & (kinds != expected)
        bad_close = is_class & ((offset % k != 0) | (offset == 0))
        bad = np.flatnonzero(bad_type | bad_close)
        if bad.size:
            pos = int(bad[0])
            if bad_type[pos]:
                in_group = f"a run in group {group[pos]}"
                raise ValueError(self.run_format.misplaced(body[pos], pos, offset[pos] % k, in_group))
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
        kinds = self.vocab.kind(body)
        class_pos = np.flatnonzero(kinds == self.vocab.names.index("class"))
        run_pos = self.run_format.windows(kinds)
        run_group = np.searchsorted(class_pos, run_pos)  # index of the first class token after the run
        closed = run_group < class_pos.size
        return run_pos[closed], run_group[closed], class_pos

    def _check_disjoint(self, runs: Runs, run_pos: np.ndarray, run_group: np.ndarray) -> None:
        by_start = np.argsort(runs.starts, kind="stable")
        clash = np.flatnonzero(runs.starts[by_start[1:]] < runs.ends[by_start[:-1]])
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
    def grammar(self, batch_size: int) -> PanopticGrammar:
        """A batch of decoding states that yields the tokens allowed next (constrained decoding)."""
        return PanopticGrammar(self.run_format, self.is_thing, batch_size)
