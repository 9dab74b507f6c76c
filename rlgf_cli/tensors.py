"""Small helpers for padded token batches (left-padded queries, right-padded responses)."""

from __future__ import annotations

from typing import Iterator, Sequence

import torch


def cat_padded(tensors: Sequence[torch.Tensor], pad_value: int | float, side: str) -> torch.Tensor:
    """Concatenate ``[b_i, L_i]`` tensors along the batch, padding to the longest ``L_i``
    on the ``side`` (``"left"`` or ``"right"``)."""
    width = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        missing = width - t.shape[1]
        if missing:
            pad = torch.full((t.shape[0], missing), pad_value, dtype=t.dtype, device=t.device)
            t = torch.cat([pad, t], 1) if side == "left" else torch.cat([t, pad], 1)
        out.append(t)
    return torch.cat(out, 0)


def trim_query(query: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop leading columns that are padding in every row (left-padded batch)."""
    keep = mask.sum(0) > 0
    if keep.all() or not keep.any():
        return query, mask
    first = int(keep.nonzero()[0])
    return query[:, first:], mask[:, first:]


def trim_response_width(mask: torch.Tensor) -> int:
    """Width of a right-padded batch once trailing all-padding columns are dropped (≥ 1)."""
    lengths = mask.sum(1)
    return max(int(lengths.max()) if lengths.numel() else 1, 1)


def chunks(n: int, size: int) -> Iterator[slice]:
    """Slices covering ``range(n)`` in steps of ``size``."""
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))
