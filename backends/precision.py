"""The one precision resolver: what ``--precision auto|fp32|bf16`` means on this machine.

Under ``bf16`` matrix products run in bfloat16 through ``torch.autocast`` while the weights
and optimizer state of the models being trained stay float32; frozen models (the reference,
a local guide, a reward classifier, a policy being evaluated or served) hold the weights of
their matrix products in bfloat16, so no step re-casts them, and their embeddings and norms
in float32, so their residual stream stays float32 as a trained model's does under autocast
(see :func:`hold_frozen`). ``auto`` picks bf16 where the hardware runs it fast: a CUDA device
that supports it, or a CPU that reports AMX-BF16 or AVX512-BF16 (read from ``/proc/cpuinfo``;
tests inject the flags). Elsewhere it is float32 — bf16 on a CPU without those units is
emulated and slower, so it is only used when asked for, and said so.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from pathlib import Path

from backends.errors import RlgfError

PRECISIONS = ("auto", "fp32", "bf16")
#: CPU feature flags (as /proc/cpuinfo names them) whose units run bf16 matrix products natively
BF16_CPU_FLAGS = ("amx_bf16", "avx512_bf16")
_ALIASES = {"float32": "fp32", "fp32": "fp32", "bfloat16": "bf16", "bf16": "bf16", "auto": "auto"}


@dataclass(frozen=True)
class Precision:
    name: str  # "fp32" or "bf16"
    reason: str
    device_type: str = "cpu"

    @property
    def bf16(self) -> bool:
        return self.name == "bf16"

    def autocast(self):
        """A reusable context: bf16 autocast on this device type, or nothing under fp32."""
        import torch

        if not self.bf16:
            return contextlib.nullcontext()
        return torch.autocast(self.device_type, dtype=torch.bfloat16)

    @property
    def frozen_dtype(self):
        """The dtype of frozen models' matrix-product weights (see :func:`hold_frozen`)."""
        import torch

        return torch.bfloat16 if self.bf16 else torch.float32

    @property
    def attention(self) -> str | None:
        """The attention kernel for models under this precision, or None to keep theirs.

        Eager under bf16 on a CPU: torch's CPU scaled-dot-product kernels are slow in bfloat16
        at rlgf's sequence lengths (tens of tokens) — measured on a 2-core AMX Xeon with
        SmolLM2-135M on 16×44 tokens, a no-grad forward with bf16 weights took 2.17 s with
        sdpa against 0.88 s eager, an autocast forward+backward 3.8–4.0 s against 3.1 s (the
        flash-attention backward alone was 22 % of it). fp32 keeps each model's own choice,
        so its numbers stay what they were; CUDA keeps its fused kernels."""
        return "eager" if self.bf16 and self.device_type == "cpu" else None

    def info(self) -> dict:
        return {"precision": self.name, "precision_reason": self.reason}

    def describe(self) -> str:
        return f"precision {self.name} ({self.reason})"


def autocast_of(precision: Precision | None):
    """``precision.autocast()``, or nothing when no precision was chosen (a model run as it is)."""
    return precision.autocast() if precision is not None else contextlib.nullcontext()


def cpu_flags(cpuinfo: str | None = None) -> set[str]:
    """The bf16-related feature flags of this CPU (empty when ``/proc/cpuinfo`` is unreadable)."""
    if cpuinfo is None:
        try:
            cpuinfo = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
        except OSError:
            return set()
    for line in cpuinfo.splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split()) & set(BF16_CPU_FLAGS)
    return set()


def resolve_precision(precision: str | None, device, *, flags: set[str] | None = None,
                      cuda_bf16: bool | None = None) -> Precision:
    """The :class:`Precision` for ``--precision`` on ``device`` (a name or ``torch.device``).

    ``flags`` (the CPU's bf16 flags) and ``cuda_bf16`` (whether the GPU supports bf16) are
    read from the machine when not given. An unknown name, or bf16 asked for on a device
    that cannot run it, raises :class:`RlgfError`.
    """
    name = _ALIASES.get(str(precision or "auto").lower())
    if name is None:
        raise RlgfError(f"unknown --precision '{precision}'", f"choose one of: {', '.join(PRECISIONS)}")
    dev_type = getattr(device, "type", None) or str(device).split(":")[0]
    if dev_type == "cuda":
        if cuda_bf16 is None:
            import torch

            cuda_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
        if name == "fp32":
            return Precision("fp32", "asked for", dev_type)
        if cuda_bf16:
            return Precision("bf16", "asked for" if name == "bf16" else "the GPU supports bf16", dev_type)
        if name == "bf16":
            raise RlgfError("--precision bf16 was asked for but this GPU does not support bfloat16",
                            "use --precision fp32 (or auto)")
        return Precision("fp32", "the GPU does not support bf16", dev_type)
    if dev_type != "cpu":
        if name == "bf16":
            raise RlgfError(f"--precision bf16 is supported on CPU and CUDA devices, not on {dev_type}",
                            "use --precision fp32 (or auto)")
        return Precision("fp32", f"{dev_type}: float32", dev_type)
    have = cpu_flags() if flags is None else set(flags) & set(BF16_CPU_FLAGS)
    units = ", ".join(sorted(f.upper().replace("_", "-") for f in have))
    if name == "fp32":
        return Precision("fp32", "asked for", dev_type)
    if name == "bf16":
        why = f"asked for; the CPU has {units}" if have else \
            "asked for; this CPU has no AMX-BF16 or AVX512-BF16, so bf16 is emulated and slower than fp32"
        return Precision("bf16", why, dev_type)
    if have:
        return Precision("bf16", f"the CPU reports {units}", dev_type)
    return Precision("fp32", "the CPU has no AMX-BF16 or AVX512-BF16 units", dev_type)


def use_kernels(model, precision: Precision) -> None:
    """Give a transformers model (or a critic's body) the precision's kernels.

    Its attention implementation (:attr:`Precision.attention`), and under CPU bf16 an output
    head that always sees a contiguous input. Without that, a frozen model's head (the
    reference, a guide, the learner's bf16 decoding copy) gets ``hidden[:, -n:]`` — a strided
    view — with a weight that needs no gradient, so ``torch.matmul`` does not fold it into one
    matrix product but broadcasts the weight over the batch, and the CPU's bf16 batched product
    copies that broadcast: 32 × 576 × 49152 values (1.8 GB) for SmolLM2's prefill of 32
    prompts, 2.3 s of a 4.7 s rollout on a 2-core AMX Xeon. A copy of the hidden states
    (32 × 576 values) avoids it. fp32 and CUDA keep what they had, so their numbers are
    unchanged. A model that does not offer the choice keeps its own."""
    _use_attention(getattr(model, "body", model), precision)  # a critic: its transformer body
    if precision.bf16 and precision.device_type == "cpu":
        contiguous_head(model)


def _use_attention(model, precision: Precision) -> None:
    want = precision.attention
    config = getattr(model, "config", None)
    if want is None or config is None or getattr(config, "_attn_implementation", None) in (None, want):
        return
    try:
        model.set_attn_implementation(want)
    except (AttributeError, ValueError, NotImplementedError):
        pass


def contiguous_head(model) -> None:
    """Make the output head of ``model`` (a transformers model) copy a strided input to a
    contiguous one first; once per model (a copy made with ``deepcopy`` keeps it)."""
    head = _module(model, "get_output_embeddings")
    if head is None or getattr(head, "_rlgf_contiguous_input", False):
        return
    head.register_forward_pre_hook(_contiguous_input)
    head._rlgf_contiguous_input = True


def _contiguous_input(module, args):
    if args and hasattr(args[0], "is_contiguous") and not args[0].is_contiguous():
        return (args[0].contiguous(), *args[1:])
    return None


def freeze_in(policy, precision: Precision) -> None:
    """Give a frozen local policy the precision's weights (:func:`hold_frozen`) and attention
    kernel (API policies are left alone)."""
    if getattr(policy, "trainable", False) and getattr(policy, "model", None) is not None and precision.bf16:
        hold_frozen(policy.model, precision)
        use_kernels(policy.model, precision)


def hold_frozen(model, precision: Precision) -> None:
    """Under bf16, give a model that is never trained bfloat16 weights for its matrix products
    (linear layers, GPT-2's ``Conv1D``, the output head) and keep its embeddings, norms and
    anything else float32; fp32 leaves it as it is.

    All-bf16 weights would put the residual stream in bfloat16 (the embeddings' output, and
    every sum onto it, rounded to 8 bits of mantissa), while the float32 learner under autocast
    adds bf16 products onto a float32 stream. These weights are exactly what autocast makes of
    the learner's, so the learner's bf16 decoding copy computes the very logits the learner
    scores its episodes with, and the reference and a guide drift from float32 no more than the
    learner does: `bench/precision_drift.py` on SmolLM2-135M (32 prompts × 24 sampled tokens)
    measured a per-token KL from the float32 model of 8.1e-4 this way against 1.6e-3 with
    all-bf16 weights, and 0 between the learner and its decoding copy against 2.2e-3. An output
    head tied to the input embeddings (SmolLM2, GPT-2) gets its own bf16 copy of the weight,
    so the embeddings stay float32 and no step re-casts the head.
    """
    if not precision.bf16:
        return
    from torch import nn

    dtype = precision.frozen_dtype
    head = _module(model, "get_output_embeddings")
    embed = _module(model, "get_input_embeddings")
    if head is not None and embed is not None and getattr(head, "weight", None) is getattr(embed, "weight", False):
        head.weight = nn.Parameter(head.weight.detach().to(dtype), requires_grad=False)  # untie
    for module in model.modules():
        if isinstance(module, nn.Linear) or type(module).__name__ == "Conv1D":
            module.to(dtype)


def _module(model, getter: str):
    get = getattr(model, getter, None)
    try:
        return get() if callable(get) else None
    except (AttributeError, NotImplementedError):
        return None


def decoding_copy(policy, precision: Precision):
    """A frozen copy of a local ``policy`` for decoding under bf16 (:func:`hold_frozen`'s weights,
    the precision's kernels): a shallow copy of the policy around a deep copy of its model."""
    import copy

    dup = copy.copy(policy)
    dup.model = copy.deepcopy(policy.model).eval()
    dup.model.requires_grad_(False)
    hold_frozen(dup.model, precision)
    use_kernels(dup.model, precision)
    return dup


def refresh_copy(dup, live) -> None:
    """Copy the weights of the model ``live`` into its :func:`decoding_copy` model ``dup``, by
    name (the copy's head may be untied from its embeddings), rounding to the copy's dtypes."""
    import torch

    weights = dict(live.named_parameters(remove_duplicate=False))
    with torch.no_grad():
        for name, dst in dup.named_parameters():
            dst.copy_(weights[name])
