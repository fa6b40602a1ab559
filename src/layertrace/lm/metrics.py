"""Per-layer language-modelling metrics of the shared readout, streamed over a corpus.

For every layer l in the selection and every real next-token target (position t predicts token
t + 1; both must be real tokens):

* next-token accuracy: argmax R(h_l)[t] == token[t + 1];
* cross-entropy (nats) and perplexity = exp(mean cross-entropy);
* agreement with the model's own final prediction (argmax at layer L);
* the token's saturation layer (Geva et al. 2022): the smallest l such that argmax R(h_k) equals the
  final prediction for every traced k >= l (relative to the model, not the target).

Memory: one layer's (B, T, V) logits exist at a time; they are reduced to per-token numbers and
dropped before the next block runs (never an (L+1, B, T, V) stack).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..errors import LayertraceError
from ..layers import LayerSpec, resolve_layers


@dataclass
class LMMetrics:
    """Per-layer LM metrics; lists run over ``layers``.

    Attributes:
        layers: traced layer indices (0 = embeddings, L = last block).
        n_tokens: number of scored next-token targets.
        accuracy: next-token accuracy per layer.
        cross_entropy: mean negative log-likelihood (nats) per layer.
        perplexity: exp(cross_entropy) per layer.
        agreement_with_final: fraction of targets whose argmax equals the final layer's argmax.
        saturation_hist: count of tokens whose saturation layer is ``layers[i]``.
    """

    layers: list[int]
    n_tokens: int
    accuracy: list[float]
    cross_entropy: list[float]
    perplexity: list[float]
    agreement_with_final: list[float]
    saturation_hist: list[int] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "LMMetrics":
        return cls(**{k: data[k] for k in cls.__dataclass_fields__})


@torch.no_grad()
def layerwise_lm_metrics(model: Any, batches: Iterable[Mapping[str, Any]], layers: LayerSpec = None) -> LMMetrics:
    """Next-token accuracy, cross-entropy / perplexity and saturation of the shared readout per layer.

    Args:
        model: a causal LM or its adapter (``kind == "causal_lm"``).
        batches: dicts with ``input_ids`` (B, T) and optional ``attention_mask`` (B, T); targets
            are the next tokens (``labels`` with -100 also respected when present).
        layers: a :func:`~layertrace.layers.resolve_layers` spec (default all 0..L). Saturation is
            computed over the selected layers and needs the last layer L among them.

    Returns:
        :class:`LMMetrics` (float64 accumulation).
    """
    from ..models import adapt

    adapter = adapt(model)
    if adapter.kind != "causal_lm":
        raise LayertraceError(f"layerwise_lm_metrics needs a causal LM; got a {adapter.kind} adapter")
    selected = resolve_layers(adapter.n_layers, layers)
    wanted = {l: i for i, l in enumerate(selected)}
    s = len(selected)
    correct = np.zeros(s, dtype=np.float64)
    nll = np.zeros(s, dtype=np.float64)
    agree = np.zeros(s, dtype=np.float64)
    sat_hist = np.zeros(s, dtype=np.int64)
    n_tokens = 0
    final_in = adapter.n_layers in wanted
    for batch in batches:
        state = adapter.embed(batch)
        ids = adapter.model_inputs(batch)["input_ids"]
        mask = state.per_sample["attention_mask"].bool()
        target = ids[:, 1:]
        valid = mask[:, 1:] & mask[:, :-1]
        if "labels" in batch:
            valid = valid & (batch["labels"].to(ids.device)[:, 1:] != -100)
        k = int(valid.sum())
        if k == 0:
            continue
        n_tokens += k
        tgt = target[valid]
        preds = torch.empty(s, k, dtype=torch.long, device=ids.device)

        def reduce(layer: int, hidden: torch.Tensor) -> None:
            i = wanted[layer]
            logits = adapter.readout(hidden[:, :-1][valid]).double()  # (k, V): only scored positions
            logp = torch.log_softmax(logits, dim=-1)
            nll[i] += float(-logp.gather(-1, tgt[:, None]).sum())
            pred = logits.argmax(-1)
            correct[i] += float((pred == tgt).sum())
            preds[i] = pred

        if 0 in wanted:
            reduce(0, state.hidden)
        for layer in range(1, selected[-1] + 1):
            state = adapter.block(layer, state)
            if layer in wanted:
                reduce(layer, state.hidden)
        if final_in:
            final = preds[-1]
            same = preds == final[None]  # (S, k)
            agree += same.double().sum(1).cpu().numpy()
            # saturation index: first i such that same[j] holds for every j >= i
            suffix_all = same.flip(0).cumprod(0).flip(0)  # 1 where all later layers agree
            first = s - suffix_all.sum(0)  # number of leading layers not in the agreeing suffix
            sat_hist += np.bincount(first.cpu().numpy(), minlength=s)[:s]
    if n_tokens == 0:
        raise LayertraceError("layerwise_lm_metrics found no next-token target: give sequences of >= 2 real tokens")
    ce = nll / n_tokens
    return LMMetrics(
        layers=selected,
        n_tokens=n_tokens,
        accuracy=(correct / n_tokens).tolist(),
        cross_entropy=ce.tolist(),
        perplexity=np.exp(ce).tolist(),
        agreement_with_final=(agree / n_tokens).tolist() if final_in else [],
        saturation_hist=sat_hist.tolist() if final_in else [],
    )
