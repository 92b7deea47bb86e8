"""Masks as text: a reversible text form of an image or panoptic tokenizer's sequence, for language models.

Every token becomes one *piece* of text, and a sequence's text is its pieces joined (EOS writes nothing: the
text ends there). A run is ``<r`` and its slots' values, ``>`` after the last; a class is its name; a value
that fuses two (``lac``: length and class, ``end_class``: end and class) is both words; a panoptic group is
closed by ``<g NAME>``; runs and groups are separated by one space::

    semantic, lac, 1-D starts        <r 12 3 nucleus> <r 44 2 nucleus>         (start, length, class)
    semantic, extent end             <r 12 14 nucleus>                          (start, last cell, class)
    semantic, 2-D starts             <r 0 12 3 nucleus>                         (row, column, length, class)
    panoptic                         <r 12 3> <r 44 2> <g nucleus> <r 90 1> <g nucleus>

Starts and ends are flat cell indices in the tokenizer's scan order, as its tokens are. Numbers are plain
decimals and every piece is ASCII, so a language model's tokenizer splits them the same way wherever they
stand. :class:`MaskText` turns tokens or masks into text and back (``errors`` "strict" or "ignore", as
``decode``); :class:`TextGrammar` accepts text character by character under the tokenizer's grammar, so a
language model's sub-word tokens can be constrained to text that always decodes strictly (rleseg.llm).

    >>> import numpy as np
    >>> from rleseg.tokens import Tokenizer
    >>> text = MaskText(Tokenizer((2, 3), num_classes=3), ["background", "cell", "nucleus"])
    >>> text.encode(np.array([[0, 1, 1], [2, 2, 0]]))
    '<r 1 2 cell> <r 3 2 nucleus>'
    >>> text.decode('<r 1 2 cell> <r 3 2 nucleus>').tolist()
    [[0, 1, 1], [2, 2, 0]]
"""

from __future__ import annotations

import bisect
import copy
import re
from collections.abc import Sequence

import numpy as np

from .panoptic import PanopticTokenizer
from .tokenizer import Tokenizer
from .vocab import EOS

NAME = re.compile(r"[A-Za-z][A-Za-z0-9_\-]*\Z")
RUN, GROUP = "<r ", "<g "
BETWEEN = " "  # before every run or group but the first
PIECE = re.compile(r"<([rg]) ([^<>]*)>")
UNBOUNDED = 1 << 30  # the grammar's own budget: a language model's is counted in its tokens (rleseg.llm)


class MaskText:
    """The text form of ``tokenizer``'s sequences (a :class:`Tokenizer` or :class:`PanopticTokenizer`; one
    sequence an image). ``class_names``: one word per class, background first (default ``class0`` ..)."""

    def __init__(self, tokenizer: Tokenizer | PanopticTokenizer, class_names: Sequence[str] | None = None):
        if type(tokenizer) not in (Tokenizer, PanopticTokenizer):
            raise ValueError(f"masks as text take a Tokenizer or a PanopticTokenizer (one sequence an image), "
                             f"got {type(tokenizer).__name__}")
        names = [f"class{c}" for c in range(tokenizer.num_classes)] if class_names is None else list(class_names)
        if len(names) != tokenizer.num_classes:
            raise ValueError(f"class_names has {len(names)} names for {tokenizer.num_classes} classes")
        bad = [n for n in names if not NAME.match(str(n))]
        if bad or len(set(names)) != len(names):
            raise ValueError(f"class names must be distinct words of letters, digits, '_' or '-' starting with a "
                             f"letter, got {bad or names}")
        self.tokenizer, self.class_names = tokenizer, [str(n) for n in names]
        self.panoptic = isinstance(tokenizer, PanopticTokenizer)
        fmt = tokenizer.run_format
        self.slots = fmt.slots
        # pieces[s]: every token's piece at slot s of a run ("" where its range cannot stand there); the class
        # token that closes a panoptic group is slot "group".
        self.words = self._words()
        self.pieces = [self._slot_pieces(s) for s in range(len(self.slots))]
        self.group_pieces = self._group_pieces() if self.panoptic else None
        self._tables: dict = {}
        # Read at every character a constrained writer weighs (TextGrammar.needed): computed once.
        self._longest_run = len(BETWEEN) + sum(max(map(len, pieces)) for pieces in self.pieces)
        self._longest_close = len(BETWEEN) + max(map(len, self.group_pieces)) if self.panoptic else 0

    # ----------------------------------------------------------------------------- tokens <-> text
    def to_text(self, tokens) -> str:
        """A sequence's tokens (up to its first EOS; no BOS) -> its text. ValueError on a malformed sequence."""
        tokens = np.asarray(tokens, dtype=np.int64).ravel()
        ends = np.flatnonzero(tokens == EOS)
        body = tokens[: ends[0]] if ends.size else tokens
        self.tokenizer.decode(np.append(body, EOS), errors="strict")  # the text of a malformed sequence is not its mask
        out, slot = [], 0
        for token in body.tolist():
            if self.panoptic and slot == 0 and self.slots[0] != self._range_of(token):
                out.append(BETWEEN * bool(out) + self.group_pieces[token])
                continue
            piece = self.pieces[slot][token]
            out.append(BETWEEN * bool(out and slot == 0) + piece)
            slot = (slot + 1) % len(self.slots)
        return "".join(out)

    def from_text(self, text: str, errors: str = "strict") -> np.ndarray:
        """Text -> the tokens (int64, EOS last) it stands for. ``errors="strict"`` raises ValueError naming
        the first character that is not the text form of a valid sequence; ``errors="ignore"`` keeps the
        well-formed pieces (``<r ...>`` and ``<g ...>``) and drops the rest, like ``decode(errors="ignore")``."""
        if errors not in ("strict", "ignore"):
            raise ValueError(f"errors must be 'strict' or 'ignore', got {errors!r}")
        if errors == "strict":
            return self._strict(text)
        tokens = []
        for match in PIECE.finditer(text):
            kind, fields = match.group(1), match.group(2).split(" ")
            tokens += self._group_tokens(fields) if kind == "g" else self._run_tokens(fields)
        return np.array([*tokens, EOS], dtype=np.int64)

    def encode(self, *maps: np.ndarray) -> str:
        """A mask (semantic) or (semantic, instances) maps (panoptic) -> text."""
        return self.to_text(self.tokenizer.encode(*maps))

    def decode(self, text: str, errors: str = "strict"):
        """Text -> the tokenizer's decoded mask (or panoptic maps); ``errors`` as :meth:`from_text`."""
        return self.tokenizer.decode(self.from_text(text, errors), errors=errors)

    # ----------------------------------------------------------------------------- the grammar over characters
    def grammar(self) -> TextGrammar:
        """An empty :class:`TextGrammar` over this text form."""
        return TextGrammar(self)

    def table(self, context: tuple) -> tuple[list[str], np.ndarray]:
        """(sorted pieces, their tokens) that can stand in ``context``: ("slot", s) inside a run, or
        ("boundary", first) where a run (or a panoptic group's close) begins; built once each."""
        if context not in self._tables:
            if context[0] == "slot":
                pieces = {t: p for t, p in enumerate(self.pieces[context[1]]) if p}
            else:
                lead = "" if context[1] else BETWEEN
                pieces = {t: lead + p for t, p in enumerate(self.pieces[0]) if p}
                if self.panoptic:
                    pieces.update({t: lead + p for t, p in enumerate(self.group_pieces) if p})
            order = sorted(pieces, key=pieces.get)
            self._tables[context] = ([pieces[t] for t in order], np.array(order, dtype=np.int64))
        return self._tables[context]

    def longest_run(self) -> int:
        """Characters of the longest run, with the space before it."""
        return self._longest_run

    def longest_close(self) -> int:
        """Characters of the longest panoptic group close, with the space before it (0 for semantic text)."""
        return self._longest_close

    def alphabet(self) -> set[str]:
        """Every character the text form uses."""
        return set("".join(self.words)) | set(RUN + GROUP + BETWEEN + ">")

    # ----------------------------------------------------------------------------- building the pieces
    def _range_of(self, token: int) -> str:
        return self.tokenizer.vocab.names[int(self.tokenizer.vocab.kind(np.array([token]))[0])]

    def _words(self) -> list[str]:
        """Each token's value as words ("" for PAD, EOS and BOS)."""
        vocab, fmt, names = self.tokenizer.vocab, self.tokenizer.run_format, self.class_names
        words = [""] * vocab.size
        for name, span in vocab.ranges.items():
            values = span.value(np.arange(span.first, span.stop))
            if name == "class":
                texts = [names[v] for v in values]
            elif name == "lac":
                texts = [f"{(v - 1) % fmt.max_run + 1} {names[(v - 1) // fmt.max_run + 1]}" for v in values]
            elif name == "end_class":
                texts = [f"{v % fmt.num_pixels} {names[v // fmt.num_pixels + 1]}" for v in values]
            else:
                texts = [str(v) for v in values]
            words[span.first : span.stop] = texts
        return words

    def _slot_pieces(self, slot: int) -> list[str]:
        span = self.tokenizer.vocab[self.slots[slot]]
        head = RUN if slot == 0 else " "
        tail = ">" if slot == len(self.slots) - 1 else ""
        pieces = [""] * len(self.words)
        pieces[span.first : span.stop] = [head + w + tail for w in self.words[span.first : span.stop]]
        return pieces

    def _group_pieces(self) -> list[str]:
        span = self.tokenizer.vocab["class"]
        pieces = [""] * len(self.words)
        pieces[span.first : span.stop] = [GROUP + w + ">" for w in self.words[span.first : span.stop]]
        return pieces

    def _run_tokens(self, fields: list[str]) -> list[int]:
        """A run's fields -> its tokens, or [] when they are not one run of this form."""
        run = [RUN + " ".join(fields) + ">"]
        tokens, rest = [], run[0]
        for slot in range(len(self.slots)):
            pieces, ids = self.table(("slot", slot)) if slot else self.table(("boundary", True))
            found = _longest_piece(pieces, rest, final=slot == len(self.slots) - 1)
            if found is None:
                return []
            tokens.append(int(ids[found]))
            rest = rest[len(pieces[found]) :]
        return tokens

    def _group_tokens(self, fields: list[str]) -> list[int]:
        if not self.panoptic or len(fields) != 1 or fields[0] not in self.class_names[1:]:
            return []
        return [self.tokenizer.vocab["class"].first + self.class_names.index(fields[0]) - 1]

    def _strict(self, text: str) -> np.ndarray:
        grammar = self.grammar()
        for at, char in enumerate(text):
            if not grammar.feed(char):
                raise ValueError(f"text position {at} ({text[max(0, at - 12) : at]!r} then {char!r}): "
                                 f"expected {grammar.expected()}")
        if not grammar.can_end():
            raise ValueError(f"text ends inside a run or an open group (after {text[-24:]!r}): expected "
                             f"{grammar.expected()}")
        return np.array([*grammar.tokens, EOS], dtype=np.int64)


def _longest_piece(pieces: list[str], text: str, final: bool) -> int | None:
    """Index of the piece ``text`` starts with (the whole of ``text`` when ``final``), else None."""
    if final:
        at = bisect.bisect_left(pieces, text)
        return at if at < len(pieces) and pieces[at] == text else None
    end = len(text)
    for stop in range(1, end + 1):  # a non-final piece ends where the next one's space begins
        if stop == end or text[stop] == " ":
            at = bisect.bisect_left(pieces, text[:stop])
            if at < len(pieces) and pieces[at] == text[:stop]:
                return at
    return None


class TextGrammar:
    """Text of a :class:`MaskText` read character by character under its tokenizer's grammar (one sequence).

    :meth:`feed` takes a character if some valid sequence's text goes on with it; a piece is complete (its
    token goes to the grammar) when the next character cannot extend it, or at its ``>``. :meth:`can_end`
    says whether the text may end here (the tokenizer's EOS). :meth:`copy` is cheap, as a writer branches at
    every character: copies share the tokenizer's grammar state until a piece completes in one of them (then
    it takes its own), and the tokens allowed in a state are computed once."""

    def __init__(self, text: MaskText):
        self.text, self.tokens, self.partial = text, (), ""
        self.run_chars = 0  # characters of the run (or group close) being written
        self.state = text.tokenizer.grammar(1)
        self._owns_state = True
        self._allowed = self.state.allowed(UNBOUNDED)[0]

    def copy(self) -> TextGrammar:
        clone = copy.copy(self)
        self._owns_state = clone._owns_state = False
        return clone

    @property
    def context(self) -> tuple:
        slot = int(self.state.slot[0])
        return ("slot", slot) if slot else ("boundary", not self.tokens)

    @property
    def at_boundary(self) -> bool:
        """Between runs (or groups), with nothing of the next one written."""
        return not self.partial and self.context[0] == "boundary"

    def can_end(self) -> bool:
        return self.at_boundary and bool(self._allowed[EOS])

    def needed(self) -> int:
        """At most how many characters the shortest valid ending from here takes (0 where the text may end):
        the rest of the longest run and, panoptic, of the longest group close. Each character along it
        lowers this by one, so a writer that keeps it within its budget can always finish (rleseg.llm)."""
        if self.can_end():
            return 0
        close = self.text.longest_close()
        closing = self.context[0] == "boundary" and RUN.strip() not in self.partial and self._may_close()
        if closing:  # a group close begun, or a boundary that the shortest ending closes the group at
            return close - self.run_chars
        return self.text.longest_run() - self.run_chars + close

    def _may_close(self) -> bool:
        """A panoptic group is open and some class may close it now."""
        if not self.text.panoptic:
            return False
        span = self.text.tokenizer.vocab["class"]
        return bool(self._allowed[span.first : span.stop].any())

    def feed(self, char: str) -> bool:
        """Take one character; False (nothing changes) if no valid text goes on with it."""
        if self._viable(self.partial + char):
            self.partial += char
            if char == ">":
                self._complete(self._exact(self.partial))
        else:
            token = self._exact(self.partial) if self.partial else None
            if token is None or not self._viable_after(token, char):
                return False
            self._complete(token)
            self.partial = char
        self.run_chars = 0 if self.at_boundary else self.run_chars + 1
        return True

    def feed_text(self, text: str) -> bool:
        """Take every character of ``text``; False at the first that does not fit (the state is then partly fed)."""
        return all(self.feed(char) for char in text)

    def expected(self) -> str:
        """What may come next, in words (for error messages)."""
        pieces, ids = self.text.table(self.context)
        options = [p for p, t in zip(pieces, ids, strict=True) if self._allowed[t] and p.startswith(self.partial)]
        shown = ", ".join(repr(p) for p in options[:3]) + (" ..." if len(options) > 3 else "")
        return (shown or "nothing") + (" or the end" if self.can_end() else "")

    def _span(self, prefix: str) -> tuple[np.ndarray, list[str], int]:
        pieces, ids = self.text.table(self.context)
        low = bisect.bisect_left(pieces, prefix)
        high = bisect.bisect_left(pieces, prefix + "\U0010ffff", lo=low)
        return ids[low:high], pieces, low

    def _viable(self, prefix: str) -> bool:
        ids = self._span(prefix)[0]
        return bool(self._allowed[ids].any())

    def _exact(self, piece: str) -> int | None:
        ids, pieces, low = self._span(piece)
        if len(ids) and pieces[low] == piece and self._allowed[ids[0]]:
            return int(ids[0])
        return None

    def _viable_after(self, token: int, char: str) -> bool:
        probe = self.copy()
        probe._complete(token)
        return probe._viable(char)

    def _complete(self, token: int) -> None:
        if not self._owns_state:
            shared, self.state = self.state, copy.copy(self.state)
            for name in shared.row_state:
                setattr(self.state, name, getattr(shared, name).copy())
            self._owns_state = True
        self.state.advance(np.array([token]))
        self.tokens = (*self.tokens, token)
        self.partial = ""
        self._allowed = self.state.allowed(UNBOUNDED)[0]
