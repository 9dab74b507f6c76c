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


def concat(items: Sequence, pad_id: int = 0):
    """Concatenate dataclass records (rollout batches, scored buffers) along the batch.

    One rule per field type, so every record type is served by this one function:
    a 2-D tensor whose field metadata names a ``pad`` side is padded to the widest
    (``pad_value`` a number, or ``"pad_id"`` for the tokenizer's pad token), any other
    tensor is concatenated as is, lists are joined, dicts of counts summed, strings joined
    with ``,`` (each distinct value once), nested records concatenated recursively and
    ``None`` stays ``None``.
    """
    from dataclasses import fields, is_dataclass, replace

    if len(items) == 1:
        return items[0]
    values = {}
    for f in fields(items[0]):
        parts = [getattr(item, f.name) for item in items]
        first = parts[0]
        if first is None:
            values[f.name] = None
        elif is_dataclass(first):
            values[f.name] = concat(parts, pad_id)
        elif isinstance(first, torch.Tensor):
            side = f.metadata.get("pad")
            if side:
                pad = f.metadata.get("pad_value", 0)
                values[f.name] = cat_padded(parts, pad_id if pad == "pad_id" else pad, side)
            else:
                values[f.name] = torch.cat(parts)
        elif isinstance(first, list):
            values[f.name] = [x for p in parts for x in p]
        elif isinstance(first, dict):
            total: dict = {}
            for p in parts:
                for k, v in p.items():
                    total[k] = total.get(k, 0) + v
            values[f.name] = total
        elif isinstance(first, str):
            values[f.name] = ",".join(dict.fromkeys(parts))
        else:
            raise TypeError(f"concat: no rule for field {f.name} of type {type(first).__name__}")
    return replace(items[0], **values)
