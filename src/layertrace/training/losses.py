"""Aligned training losses as pure functions over per-layer features and the shared readout.

PAPER.md section 5. With ``R`` the model's own head path (final norm -> pooler -> classifier / LM
head, :meth:`Adapter.readout`) and ``h_l`` the prediction-token feature after block ``l``:

* aligned loss        ``sum_l lambda_l * CE(R(h_l), y)`` with ``lambda`` from :func:`layer_weights`;
  with self-distillation ``beta`` (``distill``) every layer l < L is scored by
  ``(1 - beta) CE(R(h_l), y) + beta KL(p_L || p_l)`` against the last layer's detached distribution
  ``p_L`` (not in the paper: it trains shallow layers to agree with the last one, the acceptance rate
  of a self-speculative draft);
* cosine regularizer  ``CE(R(h_L), y) + beta * sum_l lambda_l * (1 - cos(h_l, h_L))`` (a baseline the
  paper rejected: it barely moves shallow layers);
* per-layer heads     ``sum_l lambda_l * CE(R_l(h_l), y)`` with a separate head ``R_l`` per layer
  (:mod:`layertrace.training.heads`).

Shapes: S selected layers, B samples, K classes; causal LMs add T positions and read V logits.
Classifier labels are (B,) class ids; causal-LM labels are (B, T) token ids in the Hugging Face
convention (unshifted, ``-100`` = ignored): position t's logits are scored against token t + 1.

Memory (DESIGN.md section 5): for classifiers the readout is one stacked call over (S*B, d); for
causal LMs :func:`aligned_loss_layerwise` applies the head one layer at a time under activation
checkpointing, so the (S, B, T, V) logits never exist at once, neither forward nor backward.
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.checkpoint import checkpoint

from ..errors import LayertraceError
from ..models.layer_readout import LayerReadout

IGNORE_INDEX = -100
WeightSpec = Union[str, Sequence[float]]
WEIGHT_NAMES = ("linear", "uniform", "last")


class LayerLosses(NamedTuple):
    """A training loss and its per-layer breakdown.

    Attributes:
        total: scalar tensor (with gradients) = ``sum_s weights[s] * per_layer[s]`` (+ regularizer).
        per_layer: (S,) cross-entropy of each selected layer's readout (with gradients).
    """

    total: Tensor
    per_layer: Tensor


# --------------------------------------------------------------------------- layer weights
def _normalise(values: Sequence[float], what: str) -> list[float]:
    vals = [float(v) for v in values]
    if any(v != v or v < 0 for v in vals):
        raise LayertraceError(f"layer weights {what} must be non-negative numbers, got {vals}")
    total = sum(vals)
    if total <= 0:
        raise LayertraceError(f"layer weights {what} sum to 0; give at least one positive weight")
    return [v / total for v in vals]


def layer_weights(name: WeightSpec, n_layers: int) -> list[float]:
    """The aligned-loss weights ``lambda_1..lambda_L`` of layers 1..L (they sum to 1).

    Args:
        name: ``"linear"`` (the paper's ``2l / (L(L+1))``, increasing), ``"uniform"`` (``1/L``, the
            paper's ablation), ``"last"`` (all weight on L: plain last-layer cross-entropy), or a
            user list of L non-negative numbers (normalised to sum 1).
        n_layers: L.

    Returns:
        A list of L floats, entry ``l-1`` is ``lambda_l``.
    """
    if n_layers < 1:
        raise LayertraceError(f"layer_weights needs n_layers >= 1, got {n_layers}")
    if isinstance(name, str):
        key = name.strip().lower()
        if key == "linear":
            return [2.0 * l / (n_layers * (n_layers + 1)) for l in range(1, n_layers + 1)]
        if key == "uniform":
            return [1.0 / n_layers] * n_layers
        if key == "last":
            return [0.0] * (n_layers - 1) + [1.0]
        from ..errors import did_you_mean

        raise LayertraceError(
            f"unknown layer weights {name!r}{did_you_mean(key, WEIGHT_NAMES)}; use linear, uniform, last or a list"
        )
    values = list(name)
    if len(values) != n_layers:
        raise LayertraceError(f"layer weights list has {len(values)} entries; the model has {n_layers} layers (1..L)")
    return _normalise(values, "list")


def weights_for_layers(spec: WeightSpec, n_layers: int, layers: Sequence[int]) -> list[float]:
    """Weights of the selected ``layers`` (indices in 0..L), renormalised to sum 1.

    A named scheme is evaluated over 0..L (``linear`` gives layer l weight proportional to l, so
    layer 0 gets 0) and restricted to ``layers``; a user list gives one weight per selected layer
    (or one per layer 1..L when exactly layers 1..L are selected).
    """
    layers = list(layers)
    if isinstance(spec, str):
        key = spec.strip().lower()
        if key == "last" and n_layers not in layers:
            raise LayertraceError(f"layer weights 'last' need layer {n_layers} among the trained layers {layers}")
        full = [0.0] + layer_weights(key, n_layers)
        if key == "uniform":
            full = [1.0] * (n_layers + 1)
        picked = [full[l] for l in layers]
        return _normalise(picked, f"{spec!r} over layers {layers}")
    values = list(spec)
    if len(values) != len(layers):
        raise LayertraceError(
            f"layer weights list has {len(values)} entries but {len(layers)} layers {layers} take part; "
            f"give one weight per trained layer"
        )
    return _normalise(values, "list")


# --------------------------------------------------------------------------- cross-entropy per layer
def causal_lm_labels(batch: dict[str, Any]) -> Tensor:
    """(B, T) next-token labels of a causal-LM batch: ``labels`` if given, else ``input_ids`` with
    padding (``attention_mask == 0``) set to ``-100``. Unshifted (HF convention)."""
    if "labels" in batch and batch["labels"] is not None:
        return batch["labels"]
    labels = batch["input_ids"].clone()
    if "attention_mask" in batch:
        labels[batch["attention_mask"] == 0] = IGNORE_INDEX
    return labels


def readout_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean cross-entropy of one layer's logits.

    Args:
        logits: (B, K) with ``labels`` (B,), or causal LM (B, T, V) with ``labels`` (B, T) unshifted
            (position t is scored against token t + 1; ``-100`` ignored).
    Returns:
        Scalar tensor, computed in float32 whatever the logits dtype.
    """
    if logits.dim() == 2:
        return F.cross_entropy(logits.float(), labels)
    if logits.dim() == 3:
        vocab = logits.shape[-1]
        return F.cross_entropy(logits[:, :-1].reshape(-1, vocab).float(), labels[:, 1:].reshape(-1),
                               ignore_index=IGNORE_INDEX)
    raise LayertraceError(f"readout logits must be (B, K) or (B, T, V), got shape {tuple(logits.shape)}")


def distill_kl(logits: Tensor, teacher_log_probs: Tensor, labels: Tensor) -> Tensor:
    """Mean ``KL(p_teacher || p_student)`` of one layer's logits against fixed teacher log-probabilities.

    Args:
        logits: student logits (B, K), or causal LM (B, T, V).
        teacher_log_probs: log-softmax of the teacher's logits, same shape, without gradients.
        labels: (B,) or (B, T) unshifted, as in :func:`readout_cross_entropy`: a causal LM is scored at
            the positions its cross-entropy reads (t < T - 1 whose next token is not ``-100``).
    Returns:
        Scalar tensor (float32), averaged like the cross-entropy: over samples, or over scored positions.
    """
    student = logits.float().log_softmax(-1)
    kl = (teacher_log_probs.exp() * (teacher_log_probs - student)).sum(-1)  # (B,) or (B, T)
    if kl.dim() == 1:
        return kl.mean()
    scored = (labels[:, 1:] != IGNORE_INDEX).to(kl.dtype)
    return (kl[:, :-1] * scored).sum() / scored.sum().clamp_min(1.0)


def _layer_loss(logits: Tensor, labels: Tensor, teacher: Tensor | None, beta: float) -> tuple[Tensor, Tensor]:
    """(training loss, cross-entropy) of one layer: the CE alone, or ``(1 - beta) CE + beta KL`` to ``teacher``."""
    ce = readout_cross_entropy(logits, labels)
    if teacher is None or beta == 0.0:
        return ce, ce
    return (1.0 - beta) * ce + beta * distill_kl(logits, teacher, labels), ce


def check_distill(beta: float) -> float:
    """``beta`` as a float in [0, 1), or a one-line error."""
    beta = float(beta)
    if not 0.0 <= beta < 1.0:
        raise LayertraceError(f"distill={beta} must be in [0, 1): the weight of the KL to the last layer "
                              f"against the cross-entropy (0 = the paper's aligned loss)")
    return beta


def per_layer_cross_entropy(per_layer_logits: Tensor, labels: Tensor) -> Tensor:
    """(S,) mean cross-entropy of each layer's logits.

    Args:
        per_layer_logits: (S, B, K) with ``labels`` (B,), or causal LM (S, B, T, V) with ``labels``
            (B, T) unshifted.
    """
    if per_layer_logits.dim() == 3:  # classifier: one vectorised call over S*B rows
        s, b, k = per_layer_logits.shape
        ce = F.cross_entropy(per_layer_logits.reshape(s * b, k).float(), labels.repeat(s), reduction="none")
        return ce.view(s, b).mean(dim=1)
    if per_layer_logits.dim() == 4:
        return torch.stack([readout_cross_entropy(layer_logits, labels) for layer_logits in per_layer_logits])
    raise LayertraceError(
        f"per-layer logits must be (S, B, K) or (S, B, T, V), got shape {tuple(per_layer_logits.shape)}"
    )


def _weights_tensor(weights: Sequence[float] | Tensor, n: int, like: Tensor) -> Tensor:
    w = torch.as_tensor(weights, dtype=torch.float32, device=like.device)
    if w.shape != (n,):
        raise LayertraceError(f"got {w.numel()} layer weights for {n} layers; give one weight per layer")
    return w


def aligned_loss(per_layer_logits: Tensor | tuple, labels: Tensor, weights: Sequence[float] | Tensor, *,
                 layers: Sequence[int] | None = None, use_checkpoint: bool = True,
                 distill: float = 0.0) -> LayerLosses:
    """The aligned loss ``sum_s weights[s] * CE(logits[s], labels)`` and its per-layer breakdown.

    What training runs (``TrainingObjective`` for ``aligned`` and ``multi-head``), and the public name.

    Args:
        per_layer_logits: one of
            * stacked readout logits (S, B, K), or causal LM (S, B, T, V);
            * ``(readout, features)``: a :class:`~layertrace.models.layer_readout.LayerReadout`
              (shared head or per-layer heads) or an :class:`~layertrace.models.base.Adapter` (its
              shared head), and the S readout inputs ``h_l`` of ``layers``
              (``adapter.layer_features``). Classifiers are read in one stacked call
              (:meth:`LayerReadout.stacked`); causal LMs one layer at a time, checkpointed
              (:func:`aligned_loss_layerwise`), so (S, B, T, V) logits never coexist;
            * ``(adapter, trace)`` of an Adapter and its :class:`~layertrace.models.base.Trace`
              (its ``logits`` when present, else the readout of ``trace.features``, which needs
              ``pool`` to be the identity, true for every [CLS] classifier and causal LM).
        labels: (B,) class ids, or (B, T) unshifted token ids for a causal LM (``-100`` ignored).
        weights: S weights (e.g. :func:`weights_for_layers`); used as given (not renormalised), so
            weights of sum 1 give a loss on the scale of one cross-entropy.
        layers: the S layer indices of ``features`` (needed by per-layer heads; default the last S).
        use_checkpoint: causal LMs: recompute each layer's logits in backward instead of keeping them.
        distill: self-distillation weight beta in [0, 1): each of the first S - 1 layers is scored by
            ``(1 - beta) CE + beta KL(p_last || p_l)`` (:func:`distill_kl`) against the deepest selected
            layer's detached distribution; 0 (default) is the paper's aligned loss.

    Returns:
        :class:`LayerLosses`: ``total`` (scalar) = ``sum_s weights[s] * loss_s``; ``per_layer`` (S,)
        the cross-entropy of each layer (without the KL term), both with gradients.
    """
    distill = check_distill(distill)
    if isinstance(per_layer_logits, tuple):
        reader, feats = per_layer_logits
        if hasattr(feats, "features"):  # an (adapter, Trace) pair
            if feats.logits is None:
                return aligned_loss_layerwise(reader, list(feats.features), labels, weights, distill=distill)
            per_layer_logits = feats.logits
        else:
            read = reader if isinstance(reader, LayerReadout) else LayerReadout.of(reader)
            feats = list(feats)
            layers = read.layers[-len(feats):] if layers is None else [int(l) for l in layers]
            if getattr(read.adapter, "kind", "classifier") == "causal_lm":
                return aligned_loss_layerwise(read, feats, labels, weights, use_checkpoint, layers=layers,
                                              distill=distill)
            per_layer_logits = read.stacked(layers, feats)
    per_layer = per_layer_cross_entropy(per_layer_logits, labels)
    w = _weights_tensor(weights, per_layer.shape[0], per_layer)
    if distill == 0.0 or per_layer.shape[0] < 2:
        return LayerLosses(total=(w * per_layer).sum(), per_layer=per_layer)
    teacher = per_layer_logits[-1].detach().float().log_softmax(-1)
    kl = torch.stack([distill_kl(layer_logits, teacher, labels) for layer_logits in per_layer_logits[:-1]])
    mixed = torch.cat([(1.0 - distill) * per_layer[:-1] + distill * kl, per_layer[-1:]])
    return LayerLosses(total=(w * mixed).sum(), per_layer=per_layer)


def _checkpointed_layer_loss(readout: Callable[[Tensor], Tensor], h: Tensor, labels: Tensor,
                             teacher: Tensor | None, beta: float) -> tuple[Tensor, Tensor]:
    """:func:`_layer_loss` of ``readout(h)`` whose logits are freed after the forward and recomputed in backward."""
    if not torch.is_grad_enabled() or not h.requires_grad:
        return _layer_loss(readout(h), labels, teacher, beta)
    return checkpoint(lambda x: _layer_loss(readout(x), labels, teacher, beta), h, use_reentrant=False)


def aligned_loss_layerwise(
    readout: Any,
    features: Sequence[Tensor],
    labels: Tensor,
    weights: Sequence[float] | Tensor,
    use_checkpoint: bool = True,
    layers: Sequence[int] | None = None,
    distill: float = 0.0,
) -> LayerLosses:
    """The aligned loss with the head applied one layer at a time (causal LMs).

    Each layer's logits (B, T, V) are built, scored and (with ``use_checkpoint``) freed at once;
    backward recomputes them one layer at a time. Peak memory is one layer's logits, not S of them.

    Args:
        readout: a :class:`~layertrace.models.layer_readout.LayerReadout` (read at ``layers``), an
            Adapter (its shared head) or any callable ``h -> logits``.
        features: S readout inputs ``h_l``, each (B, T, d) (or (B, d) for classifiers).
        labels, weights: as in :func:`aligned_loss`.
        layers: the S layer indices of ``features`` (a LayerReadout only; default its last S).
        distill: as in :func:`aligned_loss`; the teacher is the last feature's readout, computed once
            more without gradients (one extra head forward, no (S, B, T, V) logits kept).
    """
    distill = check_distill(distill)
    if isinstance(readout, LayerReadout):
        at = readout.layers[-len(features):] if layers is None else [int(l) for l in layers]
        fns = [(lambda h, l=l: readout(l, h)) for l in at]
    else:
        fn = readout.readout if hasattr(readout, "readout") else readout
        fns = [fn] * len(features)
    teacher = None
    if distill and len(features) > 1:
        with torch.no_grad():
            teacher = fns[-1](features[-1]).float().log_softmax(-1)
    last = len(features) - 1
    pairs = [(_checkpointed_layer_loss if use_checkpoint else _plain_layer_loss)(
        fn, h, labels, teacher if s < last else None, distill) for s, (fn, h) in enumerate(zip(fns, features))]
    per_layer = torch.stack([ce for _, ce in pairs])
    w = _weights_tensor(weights, per_layer.shape[0], per_layer)
    return LayerLosses(total=(w * torch.stack([loss for loss, _ in pairs])).sum(), per_layer=per_layer)


def _plain_layer_loss(readout: Callable[[Tensor], Tensor], h: Tensor, labels: Tensor, teacher: Tensor | None,
                      beta: float) -> tuple[Tensor, Tensor]:
    """:func:`_layer_loss` of ``readout(h)`` (logits kept for backward)."""
    return _layer_loss(readout(h), labels, teacher, beta)


# --------------------------------------------------------------------------- cosine regularizer
def cosine_to_last(features: Sequence[Tensor] | Tensor, last: Tensor, mask: Tensor | None = None) -> Tensor:
    """(S,) mean per-sample cosine ``cos(h_l, h_L)`` (uncentred, as in the regularizer).

    Args:
        features: S tensors (B, d), or causal LM (B, T, d) (every real position counts).
        last: h_L with the same shape as one entry.
        mask: (B, T) mask of real positions for token-level features.
    """
    out = []
    for h in features:
        cos = F.cosine_similarity(h.float(), last.float(), dim=-1, eps=1e-8)  # (B,) or (B, T)
        if cos.dim() == 2 and mask is not None:
            m = mask.to(cos.dtype)
            out.append((cos * m).sum() / m.sum().clamp_min(1.0))
        else:
            out.append(cos.mean())
    return torch.stack(out)


def cosine_regularized_loss(
    last_logits: Tensor,
    labels: Tensor,
    features: Sequence[Tensor],
    last_features: Tensor,
    weights: Sequence[float] | Tensor,
    beta: float = 1.0,
    mask: Tensor | None = None,
) -> LayerLosses:
    """The rejected baseline ``CE(R(h_L), y) + beta * sum_s weights[s] * (1 - cos(h_s, h_L))``.

    Gradients flow into both ``h_s`` and ``h_L`` (the paper does not stop either).

    Args:
        last_logits: R(h_L), (B, K) or (B, T, V).
        features: S per-layer pooled features (B, d) / (B, T, d); ``last_features`` is h_L pooled.
        weights: S weights lambda_s.
    Returns:
        :class:`LayerLosses` whose ``per_layer`` holds ``1 - cos`` of each layer (not a CE).
    """
    ce = readout_cross_entropy(last_logits, labels)
    distance = 1.0 - cosine_to_last(features, last_features, mask)
    w = _weights_tensor(weights, distance.shape[0], distance)
    return LayerLosses(total=ce + beta * (w * distance).sum(), per_layer=distance)
