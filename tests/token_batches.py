"""Token batches with padding (PAD_ID = 0), shared by the tests of the library's masks, the kit's
encoder-decoder masks, the kit's model and capture."""

from typing import Optional, Sequence

import torch

T, F = True, False

# Two source and two target sequences with padding (PAD_ID = 0) of different amounts.
SRC = torch.tensor([[5, 6, 7, 0, 0], [8, 9, 3, 4, 5]])
TGT = torch.tensor([[1, 7, 6, 5, 0, 0], [1, 5, 0, 0, 0, 0]])
SRC_PADDING = torch.tensor([[F, F, F, T, T], [F, F, F, F, F]])
TGT_PADDING = torch.tensor([[F, F, F, F, T, T], [F, F, T, T, T, T]])


def hand_causal(n: int) -> torch.Tensor:
    """Query i attends to key j exactly when j <= i, built element by element."""
    return torch.tensor([[j <= i for j in range(n)] for i in range(n)], dtype=torch.bool).reshape(n, n)


def random_tokens(
    batch: int, lengths: Sequence[int], width: int, vocab: int = 12, generator: Optional[torch.Generator] = None
) -> torch.Tensor:
    """``[batch, width]`` random content tokens (ids 3..vocab-1), sequence ``b`` padded after ``lengths[b]``."""
    tokens = torch.randint(3, vocab, (batch, width), generator=generator)
    return tokens.masked_fill(torch.arange(width)[None, :] >= torch.tensor(lengths)[:, None], 0)
