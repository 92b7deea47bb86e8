"""Masks from any Hugging Face language model, valid by construction: rleseg's grammar over its sub-word tokens.

:class:`MaskLogitsProcessor` is a ``transformers`` ``LogitsProcessor``: at every step it lets the model
choose only the sub-word tokens whose text continues a valid mask text (:mod:`rleseg.tokens.text`), and its
end-of-sequence token only where the mask may end. A prefix tree of the model's token strings is walked with
a :class:`~rleseg.tokens.text.TextGrammar` beside it, so one step visits only the tokens that the text form
allows at all (digits, class names, ``<r``, ``>``). It also keeps the end within ``max_new_tokens``: a token
is allowed only if the text can still be finished, one character a token, in the tokens left. So whatever the
model writes, greedy or sampled, ``MaskText.decode(text)`` reads it strictly.

    >>> text = MaskText(tokenizer, class_names)                        # rleseg.tokens.text
    >>> processor = MaskLogitsProcessor(text, hf_tokenizer, max_new_tokens=256)
    >>> ids = model.generate(**inputs, max_new_tokens=256, logits_processor=LogitsProcessorList([processor]))
    >>> mask = text.decode(hf_tokenizer.decode(ids[0, prompt_length:], skip_special_tokens=True))

One processor serves one ``generate`` call (it learns the prompt's length from the first step); greedy,
sampling and beam search all work, since states are kept per generated prefix. Needs ``transformers``
(``pip install 'rleseg[text]'``).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from transformers import LogitsProcessor

from .tokens.text import MaskText, TextGrammar


def token_strings(hf_tokenizer) -> list[str]:
    """The text each token id adds when it follows other text ('' for special tokens): decoded after an
    anchor, since tokenizers that mark word starts drop a leading space when a token is decoded alone."""
    anchor = hf_tokenizer.encode("a", add_special_tokens=False)
    base = hf_tokenizer.decode(anchor, clean_up_tokenization_spaces=False)
    texts = hf_tokenizer.batch_decode([[*anchor, i] for i in range(len(hf_tokenizer))],
                                      clean_up_tokenization_spaces=False)
    special = set(hf_tokenizer.all_special_ids)
    return ["" if i in special or not t.startswith(base) else t[len(base):] for i, t in enumerate(texts)]


@dataclass
class Node:
    """A prefix tree of token strings: the ids whose string ends here, and the next characters."""

    ids: list[int] = field(default_factory=list)
    next: dict[str, Node] = field(default_factory=dict)


def prefix_tree(strings: list[str], alphabet: set[str]) -> Node:
    """The tokens whose strings use only ``alphabet`` (the others can never continue a mask text)."""
    root = Node()
    for token, text in enumerate(strings):
        if text and set(text) <= alphabet:
            node = root
            for char in text:
                node = node.next.setdefault(char, Node())
            node.ids.append(token)
    return root


class MaskLogitsProcessor(LogitsProcessor):
    """Constrains a ``transformers`` model to mask texts of ``mask_text`` that end within ``max_new_tokens``.

    Args:
        mask_text: the text form (tokenizer and class names) the model writes.
        hf_tokenizer: the language model's tokenizer; every character of the text form must be one of its
            tokens on its own (byte-level tokenizers always have them), so that any text can be finished.
        max_new_tokens: the ``generate`` call's limit.
        eos_token_id: what ends the text (default the tokenizer's).
    """

    def __init__(self, mask_text: MaskText, hf_tokenizer, max_new_tokens: int, eos_token_id: int | None = None):
        self.text, self.max_new_tokens = mask_text, int(max_new_tokens)
        self.eos = hf_tokenizer.eos_token_id if eos_token_id is None else int(eos_token_id)
        if self.eos is None:
            raise ValueError("the tokenizer has no eos_token_id; pass eos_token_id")
        self.strings = token_strings(hf_tokenizer)
        alphabet = mask_text.alphabet()
        missing = sorted(alphabet - set(self.strings))
        if missing:
            raise ValueError(f"the language model's tokenizer has no single-character token for {missing}; the "
                             "mask text could not always be finished within max_new_tokens")
        self.tree = prefix_tree(self.strings, alphabet)
        self.prompt_length: int | None = None
        self.states: dict[tuple[int, ...], TextGrammar | None] = {}

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        if self.prompt_length is None:
            self.prompt_length = input_ids.shape[1]
        rows = [tuple(r) for r in input_ids[:, self.prompt_length :].tolist()]
        states = {row: self.state(row) for row in set(rows)}
        keep = torch.zeros_like(scores, dtype=torch.bool)
        for i, row in enumerate(rows):
            state = states[row]
            # An ended row is padded by generate whatever is scored; a row with a token this processor ruled out
            # (beam search may carry a hypothesis at -inf for a step) can only end.
            keep[i, [self.eos] if state is None else self.allowed(state, self.max_new_tokens - len(row))] = True
        self.states = states  # the next step's prefixes extend these
        return scores.masked_fill(~keep, float("-inf"))

    def state(self, row: tuple[int, ...]) -> TextGrammar | None:
        """The text grammar after the generated tokens ``row`` (None once it has ended, or where a token does
        not continue the text: one this processor ruled out)."""
        if row in self.states:
            return self.states[row]
        if not row:
            return self.text.grammar()
        parent = self.state(row[:-1])
        if parent is None or row[-1] == self.eos:
            return None
        child = parent.copy()
        return child if child.feed_text(self.strings[row[-1]]) else None

    def allowed(self, state: TextGrammar, left: int) -> list[int]:
        """The token ids that may come next with ``left`` tokens of budget (this one included)."""
        out = [self.eos] if state.can_end() else []
        stack = [(self.tree, state)]
        while stack:
            node, grammar = stack.pop()
            for char, child in node.next.items():
                after = grammar.copy()
                if not after.feed(char):
                    continue
                if child.ids and after.needed() <= left - 2:  # then the ending and EOS still fit
                    out += child.ids
                if child.next:
                    stack.append((child, after))
        return out
