"""KV caches for rlgf's decoding loop (:mod:`backends.hf.decode`).

``DynamicCache`` grows by concatenating a new tensor at every step, copying the whole cache
each time. :func:`reserved_cache` builds one whose full-attention layers write into storage
reserved up front. A layer can also be switched to *static* mode, the shape CUDA graphs need:
it writes at a column held in a device tensor and always returns the whole reserved width
(the caller's attention mask hides the columns not written yet), so a decoding step has the
same shapes and addresses every time.
"""

from __future__ import annotations

_RESERVED_LAYER = None


def reserved_layer_class():
    """The layer class (built lazily: importing it needs transformers)."""
    global _RESERVED_LAYER
    if _RESERVED_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class ReservedLayer(DynamicLayer):
            def __init__(self, capacity: int) -> None:
                super().__init__()
                self.capacity = capacity
                self.length = 0
                self.column = None  # static mode: the device tensor [1] holding the column to write
                self._keys = self._values = None

            def make_static(self, column) -> None:
                """From now on write at ``column`` (a long tensor of shape [1]) and return the whole
                reserved width; the reserve must already be allocated (after the prefill)."""
                self.column = column
                self.is_compileable = True
                self.keys, self.values = self._keys, self._values

            def update(self, key_states, value_states, *args, **kwargs):
                if self.column is not None:
                    self._keys.index_copy_(2, self.column, key_states)
                    self._values.index_copy_(2, self.column, value_states)
                    return self._keys, self._values
                n = key_states.shape[-2]
                if self._keys is None or self.length + n > self._keys.shape[-2]:
                    grown = 2 * self._keys.shape[-2] if self._keys is not None else 0  # geometric growth
                    self._reserve(key_states, value_states, max(self.capacity, self.length + n, grown))
                self._keys[:, :, self.length : self.length + n] = key_states
                self._values[:, :, self.length : self.length + n] = value_states
                self.length += n
                self.keys = self._keys[:, :, : self.length]
                self.values = self._values[:, :, : self.length]
                return self.keys, self.values

            def _reserve(self, key_states, value_states, capacity: int) -> None:
                if not self.is_initialized:
                    self.lazy_initialization(key_states, value_states)
                b, h, _, d = key_states.shape
                keys = key_states.new_zeros((b, h, capacity, d))
                values = value_states.new_zeros((b, h, capacity, value_states.shape[-1]))
                if self._keys is not None:
                    keys[:, :, : self.length] = self._keys[:, :, : self.length]
                    values[:, :, : self.length] = self._values[:, :, : self.length]
                self._keys, self._values = keys, values

            def get_seq_length(self) -> int:
                return self._keys.shape[-2] - 1 if self.column is not None else self.length

            def batch_select_indices(self, indices) -> None:
                if self.column is not None:
                    raise RuntimeError("a static cache keeps its rows")
                if self._keys is not None:
                    self._keys, self._values = self._keys[indices], self._values[indices]
                    self.keys = self._keys[:, :, : self.length]
                    self.values = self._values[:, :, : self.length]

        _RESERVED_LAYER = ReservedLayer
    return _RESERVED_LAYER


def reserved_cache(model, capacity: int):
    """A ``DynamicCache`` for ``model`` whose full-attention layers reserve ``capacity``
    positions; ``None`` (let the model build its own) where the layout is anything else."""
    try:
        from transformers.cache_utils import DynamicCache, DynamicLayer

        cache = DynamicCache(config=model.config)
    except Exception:  # noqa: BLE001 - an unusual config: the model's own cache will do
        return None
    if not cache.layers or any(type(layer) is not DynamicLayer for layer in cache.layers):
        return None
    layer = reserved_layer_class()
    cache.layers = [layer(capacity) for _ in cache.layers]
    return cache
