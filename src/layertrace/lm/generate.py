"""Generation from layer k: the first k blocks, then the shared final norm and LM head.

One decoding loop serves full-depth generation (k = L, equal to HF ``generate`` with the same seed
and settings), generation from any shallower layer k (elastic depth: the deeper blocks are never
run and never cached) and, in :mod:`layertrace.lm.early_exit`, per-token early exit.

Token choice follows HF's processors exactly, in HF's order: temperature, then top-k, then top-p
(nucleus: keep the smallest set of most likely tokens whose probability reaches p), then either
``argmax`` (greedy) or one ``torch.multinomial`` draw per step from a ``torch.Generator`` seeded with
``seed``. Finished rows (after ``eos_token_id``) receive ``pad_token_id`` like in HF.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

import torch
from torch import Tensor

from ..errors import LayertraceError
from ..layers import resolve_layers
from ..models.hf_auto import last_real_index

Strategy = Literal["greedy", "top_k", "nucleus", "sample"]


@dataclass
class SamplingConfig:
    """How the next token is chosen from the readout logits.

    Attributes:
        strategy: ``"greedy"`` (argmax), ``"nucleus"`` (top-p sampling, the paper's choice),
            ``"top_k"`` (top-k sampling) or ``"sample"`` (any combination of ``top_k`` / ``top_p``
            given below, like HF ``do_sample=True``).
        top_p: nucleus mass (used by ``nucleus`` and ``sample``); 1.0 disables it.
        top_k: number of candidates (used by ``top_k`` and ``sample``); 0 disables it.
        temperature: logits are divided by it before filtering (sampling strategies only).
        seed: seed of the ``torch.Generator`` that draws the samples.
    """

    strategy: Strategy = field(default="nucleus", metadata={"help": "greedy | nucleus | top_k | sample"})
    top_p: float = field(default=0.95, metadata={"help": "nucleus mass p (1.0 = off)"})
    top_k: int = field(default=50, metadata={"help": "top-k candidates (0 = off)"})
    temperature: float = field(default=1.0, metadata={"help": "softmax temperature for sampling"})
    seed: int = field(default=0, metadata={"help": "seed of the sampling generator"})

    def __post_init__(self) -> None:
        if self.strategy not in ("greedy", "top_k", "nucleus", "sample"):
            raise LayertraceError(
                f"sampling strategy {self.strategy!r} is unknown: use greedy, nucleus, top_k or sample")
        if not 0.0 < self.top_p <= 1.0:
            raise LayertraceError(f"top_p={self.top_p} must be in (0, 1]; 0.95 is the paper's nucleus")
        if self.top_k < 0:
            raise LayertraceError(f"top_k={self.top_k} must be >= 0 (0 disables it)")
        if self.temperature <= 0:
            raise LayertraceError(f"temperature={self.temperature} must be > 0; use strategy='greedy' for argmax")

    @property
    def do_sample(self) -> bool:
        return self.strategy != "greedy"

    def hf_kwargs(self) -> dict[str, Any]:
        """The equivalent keyword arguments of HF ``model.generate`` (seed: ``torch.manual_seed``)."""
        if not self.do_sample:
            return {"do_sample": False}
        top_k = self.top_k if self.strategy in ("top_k", "sample") else 0
        top_p = self.top_p if self.strategy in ("nucleus", "sample") else 1.0
        return {"do_sample": True, "top_k": top_k, "top_p": top_p, "temperature": self.temperature}


def filter_logits(logits: Tensor, cfg: SamplingConfig) -> Tensor:
    """Temperature, top-k and top-p filtering of (B, V) float logits (removed entries = -inf).

    Same arithmetic as HF's ``TemperatureLogitsWarper``, ``TopKLogitsWarper`` and
    ``TopPLogitsWarper`` (min_tokens_to_keep = 1), in that order.
    """
    kw = cfg.hf_kwargs()
    if not kw["do_sample"]:
        return logits
    if kw["temperature"] != 1.0:
        logits = logits / kw["temperature"]
    if kw["top_k"]:
        k = min(kw["top_k"], logits.shape[-1])
        kth = torch.topk(logits, k)[0][..., -1, None]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if kw["top_p"] < 1.0:
        sorted_logits, sorted_idx = torch.sort(logits, descending=False)
        cumulative = sorted_logits.softmax(dim=-1).cumsum(dim=-1)
        remove_sorted = cumulative <= (1 - kw["top_p"])
        remove_sorted[..., -1:] = False
        remove = remove_sorted.scatter(1, sorted_idx, remove_sorted)
        logits = logits.masked_fill(remove, float("-inf"))
    return logits


def choose_tokens(logits: Tensor, cfg: SamplingConfig, generator: torch.Generator | None) -> Tensor:
    """Pick one token per row from (B, V) logits: argmax, or one multinomial draw. Returns (B,) long."""
    logits = logits.float()
    if not cfg.do_sample:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(filter_logits(logits, cfg), dim=-1)
    return torch.multinomial(probs, num_samples=1, generator=generator).squeeze(1)


@dataclass
class GenerationResult:
    """Output of :func:`generate` / :func:`~layertrace.lm.early_exit.early_exit_generate`.

    Attributes:
        sequences: (B, P + n) prompt followed by the new tokens (like HF ``generate``).
        new_tokens: (B, n) the generated tokens (``pad_token_id`` after a row's eos).
        new_mask: (B, n) 1 where a token was really generated (0 after the row finished).
        layer: the readout layer (generation from layer k), or ``None`` for early exit.
        exit_layers: (B, n) the layer each token exited at (early exit only; 0 where ``new_mask`` is 0).
        blocks_run: block applications executed, summed over rows and steps (finished rows included
            where the decoder keeps stepping them: sampling in :func:`generate`, early exit).
        seconds: wall-clock time of the decoding loop (prefill included).
        stats: extra counters of the decoder (self-speculative decoding: draft layer, gamma, rounds,
            acceptance); ``None`` otherwise.
    """

    sequences: Tensor
    new_tokens: Tensor
    new_mask: Tensor
    layer: int | None = None
    exit_layers: Tensor | None = None
    blocks_run: int = 0
    seconds: float = 0.0
    stats: dict | None = None

    @property
    def n_generated(self) -> int:
        """Number of real generated tokens over all rows."""
        return int(self.new_mask.sum())

    @property
    def tokens_per_second(self) -> float:
        return self.n_generated / self.seconds if self.seconds > 0 else float("nan")


def as_causal_adapter(model: Any):
    """``adapt(model)`` and check it is a causal LM with a KV cache (our HF causal adapters)."""
    from ..models import adapt

    adapter = adapt(model)
    if adapter.kind != "causal_lm":
        raise LayertraceError(
            f"generation needs a causal LM; {type(model).__name__} is a {adapter.kind} (kind must be 'causal_lm')")
    if not hasattr(adapter, "new_cache"):
        raise LayertraceError(
            f"{type(adapter).__name__} has no KV cache support (new_cache); use a Hugging Face causal LM")
    return adapter


def prepare_prompt(input_ids: Tensor, attention_mask: Tensor | None, device: torch.device) -> tuple[Tensor, Tensor]:
    """Check a prompt batch and move it to ``device``; a missing mask means no padding."""
    if not isinstance(input_ids, Tensor) or input_ids.dim() != 2 or input_ids.shape[1] == 0:
        raise LayertraceError("input_ids must be a (batch, tokens) tensor with at least one token per prompt")
    input_ids = input_ids.to(device)
    if attention_mask is None:
        attention_mask = torch.ones_like(input_ids)
    if attention_mask.shape != input_ids.shape:
        raise LayertraceError(
            f"attention_mask shape {tuple(attention_mask.shape)} differs from input_ids {tuple(input_ids.shape)}")
    return input_ids, attention_mask.to(device).long()


# (B,) index of each row's last real token in a (B, T) 0/1 mask: the one the adapters' "last" pooling uses.
last_real_positions = last_real_index


def _eos_set(eos_token_id: int | list[int] | None, device: torch.device) -> Tensor | None:
    if eos_token_id is None:
        return None
    ids = [eos_token_id] if isinstance(eos_token_id, int) else list(eos_token_id)
    return torch.tensor(ids, dtype=torch.long, device=device)


@torch.no_grad()
def generate(
    model: Any,
    input_ids: Tensor,
    attention_mask: Tensor | None = None,
    *,
    layer: int | None = None,
    max_new_tokens: int = 32,
    sampling: SamplingConfig | None = None,
    eos_token_id: int | list[int] | None = None,
    pad_token_id: int | None = None,
) -> GenerationResult:
    """Decode from layer ``layer``: blocks 1..k, then the shared final norm and LM head, with a KV cache.

    Args:
        model: any Hugging Face causal LM adapt() serves (docs/models.md) or its adapter.
        input_ids: (B, P) prompts; left padding is the usual choice for batched prompts (right
            padding also works: positions and masks follow ``attention_mask``).
        attention_mask: (B, P) 1 for real prompt tokens; default all ones.
        layer: k in 1..L (negative counts from the end); default L (the full model).
        max_new_tokens: number of decoding steps.
        sampling: :class:`SamplingConfig`; default nucleus p = 0.95, seed 0.
        eos_token_id: a row stops after emitting it (then gets ``pad_token_id``); stop early when all
            rows stopped. ``None`` = never stop early. Greedy decoding drops a stopped row from the
            batch (less work, the same tokens); sampling keeps stepping it, as HF does, so that its
            seeded draws stay HF's.
        pad_token_id: filler after eos (default ``eos_token_id``).

    Returns:
        :class:`GenerationResult`; with ``layer = L`` it equals HF
        ``model.generate(input_ids, attention_mask=..., **sampling.hf_kwargs(), max_new_tokens=...)``
        after ``torch.manual_seed(sampling.seed)``.
    """
    import time

    adapter = as_causal_adapter(model)
    sampling = sampling or SamplingConfig()
    depth = adapter.n_layers if layer is None else resolve_layers(adapter.n_layers, layer)[0]
    if depth == 0:
        raise LayertraceError("generation from layer 0 (embeddings) is not supported: use a layer in 1..L")
    ids, mask = prepare_prompt(input_ids, attention_mask, adapter.device)
    eos = _eos_set(eos_token_id, ids.device)
    pad = pad_token_id if pad_token_id is not None else (int(eos[0]) if eos is not None else 0)
    generator = torch.Generator(device=ids.device).manual_seed(int(sampling.seed))

    # Greedy decoding drops a finished row from the batch (and its cache rows), as self-speculative
    # decoding does; sampling keeps stepping it like HF `generate`, because one multinomial draw over
    # the whole batch per step is what keeps the seeded random stream equal to HF's.
    drop_finished = eos is not None and not sampling.do_sample
    start = time.perf_counter()
    cache = adapter.new_cache()
    batch = ids.shape[0]
    tokens = torch.full((batch, max_new_tokens), pad, dtype=torch.long, device=ids.device)
    new_mask = torch.zeros_like(tokens)
    rows = torch.arange(batch, device=ids.device)  # original row of each row still in the batch
    unfinished = torch.ones(batch, dtype=torch.bool, device=ids.device)
    step_input = ids
    blocks_run = steps = 0
    for _ in range(max_new_tokens):
        state = adapter.state_at({"input_ids": step_input, "attention_mask": mask, "past_key_values": cache}, depth)
        blocks_run += depth * rows.shape[0]
        if step_input is ids:  # prefill: read each prompt's last real token (right padding too)
            last = state.hidden[torch.arange(batch, device=ids.device), last_real_positions(mask)]
        else:
            last = state.hidden[:, -1]
        logits = adapter.readout(last)
        token = choose_tokens(logits, sampling, generator)
        token = torch.where(unfinished, token, torch.full_like(token, pad))
        tokens[rows, steps] = token
        new_mask[rows, steps] = unfinished.long()
        steps += 1
        if eos is not None:
            unfinished = unfinished & ~torch.isin(token, eos)
        if not bool(unfinished.any()):
            break
        if drop_finished and not bool(unfinished.all()):
            keep = unfinished.nonzero().squeeze(1)
            cache.batch_select_indices(keep)
            rows, token, mask, unfinished = rows[keep], token[keep], mask[keep], unfinished[keep]
        step_input = token[:, None]
        mask = torch.cat([mask, torch.ones_like(mask[:, :1])], dim=1)
    seconds = time.perf_counter() - start
    tokens, new_mask = tokens[:, :steps], new_mask[:, :steps]
    return GenerationResult(
        sequences=torch.cat([ids, tokens], dim=1),
        new_tokens=tokens,
        new_mask=new_mask,
        layer=depth,
        blocks_run=blocks_run,
        seconds=seconds,
    )
