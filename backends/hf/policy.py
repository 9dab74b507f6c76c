"""Local Hugging Face transformers models (causal and encoder-decoder) as trainable policies.

:class:`HFPolicy` implements every :class:`~backends.base.TokenPolicy` operation on top of a
``transformers`` model and tokenizer. Sampling and greedy decoding run in rlgf's own loop
(:mod:`backends.hf.decode`); beam search and prefixed generation go through ``model.generate``
(:mod:`backends.hf.generate`). The value model is in :mod:`backends.hf.critic`.

Token conventions (see :mod:`backends.base`): prompts are left-padded, responses right-padded;
response position ``t`` is scored from the state "prompt + response[:t]".
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Sequence

import torch
from safetensors import SafetensorError

from backends.base import Completion, Sampling, TokenPolicy
from backends.device import resolve_device
from backends.errors import RlgfError, RlgfWarning, first_line
from backends.hf.compiled import forward_through
from backends.hf.util import (
    check_language_model,
    damaged_config,
    hub_reachable,
    looks_like_path,
    pad_rows,
    quiet_progress,
    resolve_dtype,
    special_affixes,
    token_logprobs,
    without_prefix,
)


class HFPolicy(TokenPolicy):
    """A transformers model + tokenizer. Build with :meth:`load` (a folder or hub id) or directly."""

    backend = "hf"

    #: rows per forward pass in :meth:`complete` and :meth:`sequence_nll`
    batch_size: int = 16
    #: sample through ``model.generate`` even where rlgf's own loop (:mod:`backends.hf.decode`) can
    #: run (no beam search, no prefix); the benchmarks compare the two
    use_hf_generate: bool = False
    #: decode with each step captured in a CUDA graph on a GPU (experimental; ``--cuda-graphs``)
    cuda_graphs: bool = False
    #: the scoring forward pass compiled with ``torch.compile`` (``--compile``), or None
    compiled = None
    #: :meth:`generate` takes ``row_generators`` (each row its own random stream)
    takes_row_generators: bool = True

    def __init__(self, model, tokenizer, *, spec: str | None = None, max_prompt_length: int | None = None):
        super().__init__(spec or getattr(model.config, "_name_or_path", "") or "hf")
        self.model = model
        self.tokenizer = tokenizer
        self.is_seq2seq = bool(getattr(model.config, "is_encoder_decoder", False))
        self.max_prompt_length = max_prompt_length
        if tokenizer.pad_token is None:
            if tokenizer.eos_token is None:
                raise RlgfError(
                    f"the tokenizer of {self.spec} has neither a pad nor an end-of-sequence token",
                    "use a model whose tokenizer defines eos_token",
                )
            tokenizer.pad_token = tokenizer.eos_token
        # decoder-only models want left padding in generate(); we pad by hand anyway
        tokenizer.padding_side = "left"
        self.pad_id: int = int(tokenizer.pad_token_id)
        gen_cfg = getattr(model, "generation_config", None)
        eos: list[int] = []
        from backends.hf.chat_template import end_of_turn_id  # a chat reply ends at the template's end of turn

        turn_end = None if self.is_seq2seq else end_of_turn_id(tokenizer)
        for source in (tokenizer.eos_token_id, getattr(gen_cfg, "eos_token_id", None), model.config.eos_token_id,
                       turn_end):
            if source is None:
                continue
            for token in source if isinstance(source, (list, tuple)) else [source]:
                if int(token) not in eos:
                    eos.append(int(token))
        if not eos:
            eos = [self.pad_id]
        #: every token id that ends a response
        self.eos_ids: list[int] = eos
        self.eos_id: int = eos[0]
        self.bos_id: int | None = tokenizer.bos_token_id
        start = None
        if self.is_seq2seq:
            for source in (getattr(gen_cfg, "decoder_start_token_id", None), model.config.decoder_start_token_id):
                if source is not None:
                    start = int(source)
                    break
            if start is None:
                start = self.pad_id
        #: the seq2seq decoder's first input token (None for causal models)
        self.decoder_start_id: int | None = start
        self._prefix_ids, self._suffix_ids = special_affixes(tokenizer)
        self._said_cut = False  # whether the prompts cut to fit were reported (encode_prompts)
        try:
            import inspect

            self._keeps_logits = "logits_to_keep" in inspect.signature(model.forward).parameters
        except (TypeError, ValueError):  # pragma: no cover
            self._keeps_logits = False

    # -- loading ----------------------------------------------------------------
    @classmethod
    def load(
        cls,
        name_or_path: str,
        *,
        device="cpu",
        dtype=None,
        spec: str | None = None,
        max_prompt_length: int | None = None,
    ) -> "HFPolicy":
        """Load a ``save_pretrained`` folder or a Hugging Face hub id (cache first)."""
        from transformers import AutoConfig, AutoTokenizer

        from backends.registry import check_model_folder

        dev = torch.device(resolve_device(device))
        torch_dtype = resolve_dtype(dtype, dev)
        name = str(name_or_path).strip()
        if not name:
            raise RlgfError("empty model name", "give a model folder or a hub id, e.g. hf:./runs/x/final or hf:gpt2")
        path = Path(name).expanduser()
        local_only = True
        if path.is_dir():
            check_model_folder(path)
            source = str(path)
            config = cls._load_config(AutoConfig, source, name, local_only=True)
        elif path.exists():
            raise RlgfError(f"{path} is a file, not a model folder", "pass the folder that holds config.json")
        elif looks_like_path(name):
            raise RlgfError(f"no such folder: {name}", "check the path (relative paths start from the current folder)")
        else:
            source = name
            try:
                config = cls._load_config(AutoConfig, source, name, local_only=True)
            except RlgfError:
                if not hub_reachable():
                    raise RlgfError(
                        f"could not load {name!r}: there is no such local folder, it is not in the Hugging "
                        "Face cache, and it could not be downloaded (the hub is not reachable)",
                        "pass a local model folder (hf:./path), or download it once while online",
                    ) from None
                local_only = False
                config = cls._load_config(AutoConfig, source, name, local_only=False)
        model_cls = cls._model_class(config, name)
        with quiet_progress():
            try:
                tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=local_only)
                model = model_cls.from_pretrained(
                    source, config=config, dtype=torch_dtype, local_files_only=local_only
                )
            except SafetensorError as exc:  # a truncated or foreign weights file
                raise RlgfError(f"could not load the model {name!r}: {first_line(exc)}",
                                "its weights file is incomplete or damaged: copy or save that folder again") from exc
            except (OSError, ValueError, KeyError) as exc:  # a missing file, an unknown model type…
                raise RlgfError(f"could not load the model {name!r}: {first_line(exc)}",
                                "check that the folder is complete") from exc
        model.to(dev)
        model.eval()
        return cls(model, tokenizer, spec=spec or f"hf:{name}", max_prompt_length=max_prompt_length)

    @classmethod
    def from_spec(cls, name_or_path: str, *, device="cpu", dtype=None, spec: str | None = None, **kwargs):
        """Registry entry point: ``hf:NAME_OR_PATH`` → :meth:`load`."""
        return cls.load(name_or_path, device=device, dtype=dtype, spec=spec, **kwargs)

    @staticmethod
    def _load_config(auto_config, source: str, name: str, *, local_only: bool):
        try:
            return auto_config.from_pretrained(source, local_files_only=local_only)
        except Exception as exc:  # noqa: BLE001 - OSError, hub/HTTP errors, offline mode…
            damaged = damaged_config(Path(source), exc) if Path(source).is_dir() else None
            if damaged is not None:  # a truncated config.json: say so, not "not in the cache"
                raise damaged from exc
            if isinstance(exc, ValueError):  # config.json there but not a known model type
                raise RlgfError(f"{name!r} is not a transformers model: {exc}",
                                "pass a causal or seq2seq LM folder") from exc
            if local_only:
                raise RlgfError(f"{name!r} is not in the local Hugging Face cache") from exc
            raise RlgfError(
                f"could not load {name!r}: there is no such local folder, it is not in the Hugging Face "
                f"cache and it could not be downloaded ({type(exc).__name__})",
                "check the name, download it once while online, or pass a local model folder (hf:./path)",
            ) from exc

    @staticmethod
    def _model_class(config, name: str):
        from transformers import AutoModelForCausalLM, AutoModelForSeq2SeqLM

        check_language_model(config, name)  # a BERT classifier is in the causal mapping (BertLMHeadModel)
        if getattr(config, "is_encoder_decoder", False):
            return AutoModelForSeq2SeqLM
        if getattr(config, "model_type", None) is None:  # pragma: no cover
            raise RlgfError(f"{name!r} is not a transformers model (no model_type)")
        return AutoModelForCausalLM

    # -- description --------------------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def use_cuda_graphs(self, on: bool) -> None:
        self.cuda_graphs = bool(on)

    def use_compile(self, on: bool) -> bool:
        """Score (and train) through ``torch.compile`` (:mod:`backends.hf.compiled`); causal
        models only, decoding stays eager. Returns whether it is on."""
        from backends.hf.compiled import GradModeForward

        self.compiled = GradModeForward(self.model) if on and not self.is_seq2seq else None
        return self.compiled is not None

    def describe(self) -> str:
        n = sum(p.numel() for p in self.model.parameters())
        kind = "seq2seq" if self.is_seq2seq else "causal"
        dtypes = {p.dtype for p in self.model.parameters()}
        dtype = "bfloat16 matrices, float32 embeddings and norms" if dtypes == {torch.bfloat16, torch.float32} \
            else "/".join(sorted(str(d).removeprefix("torch.") for d in dtypes))
        return f"{self.spec} ({kind}, {n / 1e6:.1f}M parameters, {dtype}, {self.device})"

    # -- tokens -----------------------------------------------------------------
    def _prompt_ids(self, text: str, body: list[int], max_length: int | None) -> list[int]:
        prefix = self._prefix_ids
        suffix = self._suffix_ids if self.is_seq2seq else []
        body = without_prefix(body, prefix)
        if max_length is not None:
            room = max(0, max_length - len(prefix) - len(suffix))
            body = body[max(0, len(body) - room) :] if room else []
        ids = prefix + body + suffix
        if not ids:  # an empty prompt and no BOS: start from BOS/EOS as GPT-2 does
            ids = [self.bos_id if self.bos_id is not None else self.eos_id]
        return ids

    def encode_prompts(self, prompts: Sequence[str], max_length: int | None = None):
        """Left-padded ``(query, query_mask)``; prompts longer than ``max_length`` lose their start."""
        if max_length is None:
            max_length = self.max_prompt_length
        bodies = self.tokenizer(list(prompts), add_special_tokens=False)["input_ids"] if prompts else []
        rows = [self._prompt_ids(p, list(b), max_length) for p, b in zip(prompts, bodies)]
        if max_length is not None and not self._said_cut:
            affixes = len(self._prefix_ids) + (len(self._suffix_ids) if self.is_seq2seq else 0)
            cut = sum(len(without_prefix(list(b), self._prefix_ids)) + affixes > max_length for b in bodies)
            if cut:  # once per policy: a warning per batch would drown the run's output
                self._said_cut = True
                warnings.warn(RlgfWarning(
                    f"prompts longer than {max_length} tokens lose their start for {self.spec} ({cut} of the "
                    f"{len(rows)} in the first batch that had one; a chat loses its first turns); "
                    "--prompt-max-tokens raises the limit"), stacklevel=2)
        return pad_rows(rows, self.pad_id, left=True, device=self.device)

    def encode_responses(self, texts: Sequence[str], max_length: int | None = None, *, append_eos: bool = False):
        """Right-padded ``(response, response_mask)`` of texts tokenized without special tokens;
        with ``append_eos`` each row ends with EOS where it fits within ``max_length``."""
        bodies = self.tokenizer(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        tail = [self.eos_id] if append_eos else []
        rows = [(list(b) + tail)[:max_length] if max_length is not None else list(b) + tail for b in bodies]
        return pad_rows(rows, self.pad_id, left=False, device=self.device)

    def _row_tokens(self, response, response_mask) -> list[list[int]]:
        rows = []
        eos = set(self.eos_ids)
        for ids, mask in zip(response.tolist(), response_mask.tolist()):
            row = []
            for token, m in zip(ids, mask):
                if not m or token in eos:
                    break
                row.append(token)
            rows.append(row)
        return rows

    def decode(self, response, response_mask) -> list[str]:
        """Response texts, stopping at EOS or the end of the mask, special tokens dropped."""
        return self._texts(self._row_tokens(response, response_mask))

    def _texts(self, rows: list[list[int]]) -> list[str]:
        return self.tokenizer.batch_decode(rows, skip_special_tokens=True, clean_up_tokenization_spaces=False)

    # -- generation ---------------------------------------------------------------
    def generate(
        self,
        query,
        query_mask,
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        sampling: Sampling = Sampling(),
        prefix=None,
        prefix_mask=None,
        output_logprobs: bool = False,
        row_generators=None,
    ):
        """See :meth:`TokenPolicy.generate`.

        ``output_logprobs=True`` (not with beam search) adds a third tensor: the raw model
        log-probabilities of the generated tokens, ``0`` at prefix and masked positions.
        ``row_generators`` (one ``torch.Generator`` per row) give each row its own random stream
        where the decoding loop samples (see :attr:`takes_row_generators`); elsewhere (beam
        search, transformers' ``generate``) they are not used.
        """
        from backends.hf.decode import can_step, lockstep_generate
        from backends.hf.generate import generate

        plain = prefix is None or prefix.shape[1] == 0
        if plain and not self.use_hf_generate and sampling.num_beams <= 1 and can_step(self):
            out = lockstep_generate(self, query, query_mask, max_new_tokens=max_new_tokens,
                                    min_new_tokens=min_new_tokens, sampling=sampling, output_logprobs=output_logprobs,
                                    row_generators=row_generators)
            return out[:2] + out[3:]
        return generate(
            self,
            query,
            query_mask,
            max_new_tokens=max_new_tokens,
            min_new_tokens=min_new_tokens,
            sampling=sampling,
            prefix=prefix,
            prefix_mask=prefix_mask,
            output_logprobs=output_logprobs,
        )

    def complete(
        self,
        prompts: Sequence[str],
        *,
        max_new_tokens: int,
        min_new_tokens: int = 0,
        sampling: Sampling = Sampling(),
    ) -> list[str]:
        out: list[str] = []
        for start in range(0, len(prompts), self.batch_size):
            chunk = list(prompts[start : start + self.batch_size])
            query, query_mask = self.encode_prompts(chunk)
            with torch.no_grad():
                response, response_mask = self.generate(
                    query,
                    query_mask,
                    max_new_tokens=max_new_tokens,
                    min_new_tokens=min_new_tokens,
                    sampling=sampling,
                )
            rows = self._row_tokens(response, response_mask)
            texts = self._texts(rows)
            # a row shorter than its mask stopped at its EOS (which the mask includes)
            out.extend(Completion(text, len(row), len(row) < int(n), token_ids=row)
                       for text, row, n in zip(texts, rows, response_mask.sum(1).tolist()))
        return out

    # -- scoring ------------------------------------------------------------------
    def response_logits(self, query, query_mask, response, response_mask):
        """Logits ``[B, Lr, V]`` predicting each response token (one forward pass)."""
        n = response.shape[1]
        if self.is_seq2seq:
            start = torch.full_like(response[:, :1], self.decoder_start_id)
            dec_in = torch.cat([start, response[:, :-1]], dim=1)
            dec_mask = torch.cat([torch.ones_like(response_mask[:, :1]), response_mask[:, :-1]], dim=1)
            out = self.model(
                input_ids=query,
                attention_mask=query_mask,
                decoder_input_ids=dec_in,
                decoder_attention_mask=dec_mask,
                use_cache=False,
            )
            return out.logits
        ids = torch.cat([query, response[:, :-1]], dim=1)
        mask = torch.cat([query_mask, response_mask[:, :-1]], dim=1)
        positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
        kwargs = {"logits_to_keep": n} if self._keeps_logits else {}
        return forward_through(self.compiled, self.model, lambda out: out.logits[:, -n:], input_ids=ids,
                               attention_mask=mask, position_ids=positions, use_cache=False, **kwargs)

    def response_logprobs(self, query, query_mask, response, response_mask, *, with_entropy=False,
                          entropy_grad=True):
        if response.shape[1] == 0:
            empty = torch.zeros(response.shape, dtype=torch.float32, device=response.device)
            return (empty, empty.clone()) if with_entropy else empty
        logits = self.response_logits(query, query_mask, response, response_mask)
        return token_logprobs(logits, response, with_entropy=with_entropy, entropy_grad=entropy_grad)

    def _max_positions(self) -> int | None:
        cfg = self.model.config.get_text_config()
        for name in ("max_position_embeddings", "n_positions"):
            value = getattr(cfg, name, None)
            if isinstance(value, int) and value > 0:
                return value
        return None

    def sequence_nll(self, contexts: Sequence[str], texts: Sequence[str], batch_size: int | None = None):
        if len(contexts) != len(texts):
            raise ValueError("contexts and texts must have the same length")
        batch_size = batch_size or self.batch_size
        tok = self.tokenizer
        ctx_bodies = tok(list(contexts), add_special_tokens=False)["input_ids"] if contexts else []
        text_bodies = tok(list(texts), add_special_tokens=False)["input_ids"] if texts else []
        limit = None if self.is_seq2seq else self._max_positions()
        pairs: list[tuple[list[int], list[int]]] = []
        for ctx, body, text in zip(contexts, ctx_bodies, text_bodies):
            body, text = without_prefix(list(body), self._prefix_ids), list(text)
            if self.is_seq2seq:
                q = self._prefix_ids + body + self._suffix_ids or [self.eos_id]
            else:
                q = self._prefix_ids + body if (ctx or self._prefix_ids) else []
                if not q and text:  # no BOS: the first token is context, not scored
                    q, text = text[:1], text[1:]
                if limit is not None and len(q) + len(text) > limit:
                    text = text[: limit - 1]
                    keep = max(1, limit - len(text))
                    q = q[len(q) - keep :]
            pairs.append((q or [self.eos_id], text))
        # batches of similar lengths: padding is computed like any token (sorting cut the padded
        # tokens of 128 Rotten Tomatoes references by 40 %); the scores go back in input order
        order = sorted(range(len(pairs)), key=lambda i: (len(pairs[i][0]), len(pairs[i][1])))
        results: list[tuple[float, int]] = [(0.0, 0)] * len(pairs)
        dev = self.device
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.no_grad():
                for start in range(0, len(order), batch_size):
                    rows = order[start : start + batch_size]
                    chunk = [pairs[i] for i in rows]
                    query, query_mask = pad_rows([q for q, _ in chunk], self.pad_id, left=True, device=dev)
                    response, response_mask = pad_rows([t for _, t in chunk], self.pad_id, left=False, device=dev)
                    lp = self.response_logprobs(query, query_mask, response, response_mask)
                    nll = -(lp * response_mask).sum(-1)
                    counts = response_mask.sum(-1)
                    for i, a, b in zip(rows, nll.tolist(), counts.tolist()):
                        results[i] = (float(a), int(b))
        finally:
            self.model.train(was_training)
        return results

    def perplexity(self, contexts: Sequence[str], texts: Sequence[str]) -> float:
        """``exp(total NLL / total tokens)`` over all texts (``nan`` when there is no token)."""
        scored = self.sequence_nll(contexts, texts)
        tokens = sum(n for _, n in scored)
        return math.exp(sum(s for s, _ in scored) / tokens) if tokens else float("nan")

    # -- critic and saving ----------------------------------------------------------
    def make_critic(self):
        from backends.hf.critic import Critic

        return Critic.from_policy(self)

    def save(self, path) -> None:
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        with quiet_progress():
            self.model.save_pretrained(path)
        self.tokenizer.save_pretrained(path)
