"""Exit policies: when may a sample stop at layer l?

Every policy has ONE signature, used both by the simulation over cached logits and by the runtime
executor, so the two can never disagree::

    carry = policy.start(batch_size, device)
    for l in 1..L:
        exit_now, carry = policy.decide(l, logits_l, thresholds, carry)   # (P, b) bool

``logits_l`` is (b, K): the readout at layer ``l`` of the b samples still running; ``thresholds`` is a
(P,) float tensor (the simulation sweeps P thresholds at once) and ``exit_now`` is (P, b); the
runtime passes one threshold as a 0-d tensor and gets (b,) back: the same element-wise comparison. ``carry`` is a
dict of tensors whose first dim is the sample dim (b), sliced together with the samples when finished
ones are dropped. A sample that has not exited by layer L exits there (the caller forces it).

``policy.earliest_exit(threshold, L)`` is the first layer at which ``decide`` can let any sample go
whatever the logits (L when none before L can: confidence tau > 1, entropy tau < 0, patience k >= L).
The executor reads nothing before it unless the policy carries state, and runs a threshold that can
never fire as the plain full model; the simulation needs no such shortcut (it agrees anyway).

Policies (``threshold`` meaning in brackets):

* ``confidence`` (tau): exit when the max softmax probability >= tau. The paper's rule (PAPER.md
  section 6). tau > 1 never exits early (the full model); tau <= 0 exits at layer 1.
* ``entropy`` (tau, nats): exit when the softmax entropy <= tau (DeeBERT / BERxiT).
* ``patience`` (k, an integer >= 1): exit when the predictions of k consecutive layers ending at l agree
  (k = 1 exits at layer 1; PABEE's patience t is k = t + 1; k > L never exits early).
* ``fixed`` (k, a layer 1..L): every sample exits at layer k: elastic depth.
* ``oracle`` (no threshold): the earliest layer from which the prediction stays correct up to L; a
  sample wrong at L exits where its prediction stops changing (its saturation layer), so the oracle
  has exactly the full model's accuracy. Needs labels and future layers, so it is simulation-only:
  the lower bound of cost of any per-sample exit that keeps the full model's accuracy sample by sample.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from ..errors import LayertraceError, did_you_mean

Carry = dict[str, Tensor]


class ExitPolicy:
    """Base class. Subclasses implement :meth:`decide`; causal policies run in the executor."""

    name: str = "policy"
    #: decisions at layer l depend only on layers <= l (can run at inference time)
    causal: bool = True
    #: the threshold is an integer (patience k, fixed layer k)
    integer_threshold: bool = False
    #: thresholds in increasing order give exits that are later (True) or earlier (False)
    higher_threshold_is_slower: bool = True

    def start(self, batch_size: int, device: torch.device | str = "cpu") -> Carry:
        """The running state of ``batch_size`` samples before layer 1 (empty for stateless rules)."""
        return {}

    def earliest_exit(self, threshold: float, n_layers: int) -> int:
        """The first layer (1..L) at which :meth:`decide` can return True for some logits at
        ``threshold``; ``n_layers`` when no layer before L can (everyone runs to the end)."""
        return 1

    def decide(self, layer: int, logits: Tensor, thresholds: Tensor, carry: Carry) -> tuple[Tensor, Carry]:
        """Which samples may exit at ``layer``.

        Args:
            layer: 1-based layer index of ``logits``.
            logits: (b, K) readout at ``layer`` of the samples still running.
            thresholds: (P,) thresholds, or one 0-d threshold.
            carry: per-sample running state from :meth:`start` / the previous layer.
        Returns:
            ``exit_now`` (P, b) bool ((b,) for a 0-d threshold) and the updated carry.
        """
        raise NotImplementedError

    def check_thresholds(self, thresholds: Any, n_layers: int) -> list[float]:
        """Validate and return thresholds as floats (one-line error naming the fix)."""
        try:
            values = [float(t) for t in thresholds]
        except (TypeError, ValueError):
            raise LayertraceError(f"policy {self.name!r}: thresholds {thresholds!r} are not numbers; "
                                  f"e.g. --thresholds 0.5,0.9") from None
        if not values:
            raise LayertraceError(f"policy {self.name!r} needs at least one threshold, e.g. --thresholds 0.5,0.9")
        if any(v != v for v in values):
            raise LayertraceError(f"policy {self.name!r}: a threshold is NaN; give numbers, e.g. --thresholds 0.5,0.9")
        return values

    def __repr__(self) -> str:
        return f"{type(self).__name__}()"


def _float32(value: float) -> float:
    """``value`` rounded to float32, as ``decide`` compares it (the runtime's 0-d threshold is float32)."""
    return float(torch.tensor(float(value), dtype=torch.float32))


def _as_float(logits: Tensor) -> Tensor:
    return logits if logits.dtype in (torch.float32, torch.float64) else logits.float()


class ConfidencePolicy(ExitPolicy):
    """Exit when max softmax probability >= tau (the paper's rule)."""

    name = "confidence"

    def decide(self, layer: int, logits: Tensor, thresholds: Tensor, carry: Carry) -> tuple[Tensor, Carry]:
        max_prob = _as_float(logits).softmax(-1).amax(-1)  # (b,)
        return max_prob >= thresholds.unsqueeze(-1), carry

    def earliest_exit(self, threshold: float, n_layers: int) -> int:
        # a float32 softmax never exceeds 1 (its largest entry is exp(0) / sum with sum >= 1), and
        # decide compares in float32: a threshold that rounds above 1 never fires
        return n_layers if _float32(threshold) > 1.0 else 1


class EntropyPolicy(ExitPolicy):
    """Exit when the softmax entropy (nats) <= tau."""

    name = "entropy"
    higher_threshold_is_slower = False

    def decide(self, layer: int, logits: Tensor, thresholds: Tensor, carry: Carry) -> tuple[Tensor, Carry]:
        log_p = _as_float(logits).log_softmax(-1)
        entropy = -(log_p.exp() * log_p).sum(-1)  # (b,)
        return entropy <= thresholds.unsqueeze(-1), carry

    def earliest_exit(self, threshold: float, n_layers: int) -> int:
        # every log_softmax entry is <= 0, so each term -p log p >= 0: the entropy is never negative
        return n_layers if _float32(threshold) < 0.0 else 1


class PatiencePolicy(ExitPolicy):
    """Exit when the argmax of k consecutive layers (ending at this one) agree."""

    name = "patience"
    integer_threshold = True

    def start(self, batch_size: int, device: torch.device | str = "cpu") -> Carry:
        return {
            "previous": torch.full((batch_size,), -1, dtype=torch.long, device=device),
            "run": torch.zeros(batch_size, dtype=torch.long, device=device),
        }

    def decide(self, layer: int, logits: Tensor, thresholds: Tensor, carry: Carry) -> tuple[Tensor, Carry]:
        pred = logits.argmax(-1)
        run = torch.where(pred == carry["previous"], carry["run"] + 1, torch.ones_like(carry["run"]))
        exit_now = run.to(thresholds.dtype) >= thresholds.unsqueeze(-1)
        return exit_now, {"previous": pred, "run": run}

    def earliest_exit(self, threshold: float, n_layers: int) -> int:
        # the run counts layers, so k agreeing layers exist from layer k on
        return int(min(max(math.ceil(threshold), 1), n_layers))

    def check_thresholds(self, thresholds: Any, n_layers: int) -> list[float]:
        values = super().check_thresholds(thresholds, n_layers)
        for v in values:
            if v != int(v) or v < 1:
                raise LayertraceError(f"patience threshold {v} must be an integer >= 1 (layers that must agree)")
        return values


class FixedLayerPolicy(ExitPolicy):
    """Every sample exits at layer k (elastic depth: the first k blocks plus the head)."""

    name = "fixed"
    integer_threshold = True

    def decide(self, layer: int, logits: Tensor, thresholds: Tensor, carry: Carry) -> tuple[Tensor, Carry]:
        reached = (thresholds <= layer).unsqueeze(-1)  # (P, 1) or (1,)
        exit_now = reached.expand(*thresholds.shape, logits.shape[0])
        return exit_now, carry

    def earliest_exit(self, threshold: float, n_layers: int) -> int:
        return int(min(max(math.ceil(threshold), 1), n_layers))

    def check_thresholds(self, thresholds: Any, n_layers: int) -> list[float]:
        values = super().check_thresholds(thresholds, n_layers)
        for v in values:
            if v != int(v) or not 1 <= v <= n_layers:
                raise LayertraceError(f"fixed-layer threshold {v} must be a layer in 1..{n_layers}")
        return values


class OraclePolicy(ExitPolicy):
    """Earliest layer from which the prediction stays correct (needs labels; simulation only)."""

    name = "oracle"
    causal = False

    def decide(self, layer: int, logits: Tensor, thresholds: Tensor, carry: Carry) -> tuple[Tensor, Carry]:
        raise LayertraceError("the oracle policy looks at later layers and labels: use it in simulate(), "
                              "not in the runtime executor")

    def exit_layers(self, predictions: Tensor, labels: Tensor) -> Tensor:
        """Oracle exit layers.

        A sample correct at L exits at the earliest layer from which its prediction stays correct; a
        sample wrong at L exits at the earliest layer from which its prediction stays equal to the
        final one (its saturation layer), so the oracle's accuracy equals the full model's exactly.

        Args:
            predictions: (L, B) argmax at layers 1..L.
            labels: (B,) true classes.
        Returns:
            (B,) long, 1-based exit layers.
        """
        def earliest_stable(hit: Tensor) -> Tensor:
            # stays[l] = hit at l and at every later layer (reverse cumulative AND); first such layer
            stays = torch.flip(torch.cummin(torch.flip(hit.to(torch.int8), [0]), dim=0).values, [0])
            return stays.argmax(0)

        correct_at_last = predictions[-1] == labels
        target = torch.where(correct_at_last, labels, predictions[-1])  # the label, else the final prediction
        return earliest_stable(predictions == target[None, :]).long() + 1

    def check_thresholds(self, thresholds: Any, n_layers: int) -> list[float]:
        return [float("nan")]


POLICIES: dict[str, type[ExitPolicy]] = {
    "confidence": ConfidencePolicy,
    "entropy": EntropyPolicy,
    "patience": PatiencePolicy,
    "fixed": FixedLayerPolicy,
    "oracle": OraclePolicy,
}


def get_policy(policy: str | ExitPolicy) -> ExitPolicy:
    """A policy instance from its name (``confidence``, ``entropy``, ``patience``, ``fixed``, ``oracle``)."""
    if isinstance(policy, ExitPolicy):
        return policy
    key = str(policy).strip().lower().replace("_", "-")
    aliases = {"max-prob": "confidence", "maxprob": "confidence", "elastic": "fixed", "fixed-layer": "fixed"}
    key = aliases.get(key, key)
    if key not in POLICIES:
        raise LayertraceError(f"unknown exit policy {policy!r}{did_you_mean(str(policy), POLICIES)}; "
                              f"choose one of {', '.join(POLICIES)}")
    return POLICIES[key]()


def default_thresholds(policy: str | ExitPolicy, n_layers: int) -> list[float]:
    """A sensible sweep for each policy (used when no thresholds are given)."""
    name = get_policy(policy).name
    if name == "confidence":
        return [0.5, 0.6, 0.7, 0.8, 0.85, 0.9, 0.95, 0.99, 1.01]
    if name == "entropy":
        return [0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0]
    if name in ("patience",):
        return [float(k) for k in range(1, n_layers + 1)]
    if name == "fixed":
        return [float(k) for k in range(1, n_layers + 1)]
    return [float("nan")]
