"""The GPT-2 ids a small captioner actually uses, renumbered 0..V-1.

A GPT-2 LM head is a 50,257-way matmul at every caption position: for a 2-layer, 256-wide decoder that is nine
tenths of a training step, spent on ids that no caption of the embedded corpus contains.  ``TokenSubset`` keeps
the GPT-2 tokenizer (so captions are tokenised exactly as msclap tokenises them) and gives the decoder a
vocabulary of only the ids seen in the training captions plus the two that end every caption (``' '`` = 220 and
``<|endoftext|>`` = 50256, msclap's caption ending).  The subset is part of the saved model's config
(``tokenizer.subset``), so decoding maps the decoder's ids back to GPT-2 ids and then to text.
"""

from __future__ import annotations

from typing import Iterable, Sequence

import torch

__all__ = ["CAPTION_END", "TokenSubset"]

CAPTION_END = (220, 50256)  # ' <|endoftext|>' in GPT-2 ids: how every clapcap training caption ends


class TokenSubset:
    """GPT-2 ids <-> the decoder's compact ids (ascending GPT-2 order, so the same captions give the same subset)."""

    def __init__(self, gpt2_ids: Iterable[int]):
        self.gpt2_ids = sorted({int(i) for i in gpt2_ids} | set(CAPTION_END))
        self.compact_of = {g: c for c, g in enumerate(self.gpt2_ids)}
        self._lookup = torch.tensor(self.gpt2_ids, dtype=torch.long)

    def __len__(self) -> int:
        return len(self.gpt2_ids)

    @classmethod
    def from_sequences(cls, sequences: Iterable[Sequence[int]]) -> "TokenSubset":
        return cls(i for seq in sequences for i in seq)

    def to_compact(self, gpt2_ids: Sequence[int]) -> list[int]:
        """GPT-2 ids -> compact ids; an id outside the subset is an error naming it (the caller drops the caption)."""
        try:
            return [self.compact_of[int(i)] for i in gpt2_ids]
        except KeyError as err:
            raise KeyError(f"GPT-2 id {err.args[0]} is not in the captioner's vocabulary") from None

    def to_gpt2(self, compact_ids: Sequence[int] | torch.Tensor) -> list[int]:
        ids = torch.as_tensor(compact_ids, dtype=torch.long)
        return self._lookup[ids].tolist()
