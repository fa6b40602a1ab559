"""The discovery adapter's cached decoding step without replaying the model's forward (:class:`DecodeStep`)."""

from __future__ import annotations

from typing import Any, Callable, Iterator, Mapping

import torch
from torch import Tensor, nn

from ..errors import LayertraceError
from .base import Adapter, State
from .recording import _Call, _Ref, _Shared
from .self_check import dispatched


class DecodeStep:
    """The embedding step of cached decoding without replaying the model's forward.

    ``embed`` replays the HF forward up to the blocks (recorders in place of the blocks), which on a
    small model costs about as much as two or three blocks per decoded token. For a cached decoding
    step (the cache holds P tokens, T new ones) every argument the blocks get is a simple function of
    the new token ids, the (B, P + T) attention mask and the position ids; this class derives them
    directly:

    * layer 0 (``hidden``): the input embedding of the ids, plus a learned position embedding of the
      position ids (plus an offset: OPT's 2) where the model has one;
    * the 4-D attention mask: causal (key j <= P + i) and the 2-D mask, as ``bool`` (SDPA) or as an
      additive float mask (eager), or no mask where HF's SDPA path passes none;
    * rotary ``(cos, sin)``: the model's own rotary module called on the position ids (the call its
      forward makes, so dynamic / scaled rope is whatever the model does);
    * the position ids themselves, the cache object and constant flags.

    Nothing is assumed per family: the first replayed decoding step of each *case* (mask all ones or
    not, T = 1 or not: HF decides from these whether to build a mask) is matched argument by argument
    against these candidates with ``torch.equal``; a case where any argument of any block matches
    none of them (ALiBi, sliding windows, scaled embeddings, extra per-layer inputs) is marked
    unservable and keeps the replay. Models whose masks change with the cache length beyond what
    one step shows (sliding-window / chunked attention, non-full ``layer_types``), caches other than
    ``DynamicCache``, ``inputs_embeds`` batches, training mode and Accelerate-dispatched models always
    use the replay. Tests (tests/models/test_decode_step.py) check state equality with the replay over
    many steps with padding and holes for GPT-2, Llama and OPT, and the fallback on BLOOM.
    """

    def __init__(self, adapter: Adapter):  # an HFAutoAdapter
        self.adapter = adapter
        model = adapter.model
        self.embedding = model.get_input_embeddings()
        blocks = set(map(id, adapter._block_list.modules()))
        head = adapter.lm_head
        # learned position tables outside the blocks (GPT-2 wpe, OPT embed_positions)
        self.position_tables = [m for m in model.modules() if isinstance(m, nn.Embedding) and id(m) not in blocks
                                and m is not self.embedding and m is not head]
        self.rotary = [m for m in model.modules() if type(m).__name__.endswith("RotaryEmbedding")
                       and id(m) not in blocks]
        self.cases: dict[tuple, Any] = {}  # case -> (hidden rule, per-sample rules, templates) or None
        self.broken = False
        self.sliced: dict[tuple, bool] = {}  # rotary rule -> its window slice equals the module's call
        self.last_case: tuple[Any, tuple | None] = (None, None)  # (2-D mask, case) of the last state()

    @staticmethod
    def refusal(model: nn.Module) -> str | None:
        """Why a model's decoding steps must keep the replay (``None``: the decode path may be learned)."""
        cfg = model.config
        impl = getattr(cfg, "_attn_implementation", None)
        if impl not in (None, "sdpa", "eager"):
            return f"attention implementation {impl!r}"
        if getattr(cfg, "sliding_window", None) is not None and getattr(cfg, "use_sliding_window", True) is not False:
            return "sliding-window attention"
        if getattr(cfg, "attention_chunk_size", None) is not None:
            return "chunked attention"
        types = getattr(cfg, "layer_types", None)
        if types and any(t != "full_attention" for t in types):
            return "per-layer attention types"
        if dispatched(model):
            return "dispatched with Accelerate hooks"
        return None

    # --------------------------------------------------------------- when the decode path applies
    def _case(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor]) -> tuple | None:
        from transformers import DynamicCache

        cache = inputs.get("past_key_values")
        ids = inputs.get("input_ids")
        if (cache is None or type(cache) is not DynamicCache or ids is None or self.adapter.model.training
                or any(getattr(cache, "is_sliding", None) or ())):
            return None
        past = self.adapter.cache_length(cache)
        if past == 0:
            return None
        weight = self.embedding.weight
        return (bool(inputs["attention_mask"].bool().all()), ids.shape[1] == 1, weight.dtype, weight.device)

    # --------------------------------------------------------------- candidates
    def _positions(self, keep: Mapping[str, Tensor]) -> Tensor:
        return keep["position_ids"]

    def _hidden_candidates(self, ids: Tensor, pos: Tensor) -> Iterator[tuple[Any, Tensor]]:
        h = self.embedding(ids)
        yield ("embed",), h
        for table in self.position_tables:
            for offset in (0, 2):
                idx = pos + offset
                if int(idx.max()) < table.num_embeddings:
                    yield ("embed+table", table, offset), h + nn.functional.embedding(idx, table.weight)

    def _hidden(self, rule: tuple, ids: Tensor, pos: Tensor) -> Tensor:
        h = self.embedding(ids)
        if rule[0] == "embed":
            return h
        _, table, offset = rule
        return h + nn.functional.embedding(pos + offset, table.weight)

    @staticmethod
    def _allowed(mask2d: Tensor, t: int) -> Tensor:
        """(B, 1, T, P + T) bool: key j is a real token and j <= P + i for query i (causal, HF's SDPA mask)."""
        kv = mask2d.shape[1]
        q = torch.arange(kv - t, kv, device=mask2d.device)
        causal = torch.arange(kv, device=mask2d.device)[None, :] <= q[:, None]
        return causal[None, None] & mask2d.bool()[:, None, None, :]

    def _derive(self, rule: tuple, ctx: dict) -> Tensor:
        kind = rule[0]
        if kind == "pos":
            return ctx["pos"]
        if kind == "mask_bool":
            return ctx.setdefault("allowed", self._allowed(ctx["mask2d"], ctx["t"]))
        if kind == "mask_float":
            allowed = ctx.setdefault("allowed", self._allowed(ctx["mask2d"], ctx["t"]))
            return torch.zeros(allowed.shape, dtype=rule[1], device=allowed.device).masked_fill(
                ~allowed, torch.finfo(rule[1]).min)
        if kind == "rotary":
            key = ("rot", id(rule[1]))
            if key not in ctx:
                ctx[key] = rule[1](ctx["hidden"], ctx["pos"])
            return ctx[key][rule[2]]
        raise AssertionError(kind)

    # --------------------------------------------------------------- learn from a replay, then step
    def learn(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor], state: State) -> None:
        """Match the replayed ``state`` of a decoding step against the candidates (once per case)."""
        case = self._case(inputs, keep)
        if case is None or case in self.cases:
            return
        try:
            self.cases[case] = self._match(inputs, keep, state)
        except Exception:  # noqa: BLE001 - an unexpected argument structure: keep the replay for this case
            self.cases[case] = None

    def _match(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor], state: State) -> Any:
        ids, mask2d, cache = inputs["input_ids"], inputs["attention_mask"], inputs["past_key_values"]
        pos = self._positions(keep)
        hidden_rule = next((rule for rule, h in self._hidden_candidates(ids, pos) if torch.equal(h, state.hidden)),
                           None)
        if hidden_rule is None:
            return None
        ctx = {"pos": pos, "mask2d": mask2d, "t": ids.shape[1], "hidden": state.hidden}
        candidates: list[tuple] = [("pos",), ("mask_bool",)]
        dtypes = {v.dtype for v in state.per_sample.values() if v.is_floating_point()}
        candidates += [("mask_float", dt) for dt in dtypes]
        for module in self.rotary:
            candidates += [("rotary", module, 0), ("rotary", module, 1)]
        rules: dict[str, tuple] = {}
        for key, value in state.per_sample.items():
            if key in keep:
                continue
            for rule in candidates:
                try:
                    got = self._derive(rule, ctx)
                except Exception:  # noqa: BLE001 - a candidate that does not apply (e.g. rotary signature)
                    continue
                if isinstance(got, Tensor) and got.shape == value.shape and torch.equal(got, value):
                    rules[key] = rule
                    break
            else:
                return None
        refs = set(rules) | set(keep)

        def template(v: Any) -> Any:
            if v is cache:
                return _Shared("cache")
            if isinstance(v, _Ref):
                if v.flat or v.key not in refs:
                    raise LayertraceError("unmatched per-sample argument")
                return v
            if isinstance(v, Tensor) or isinstance(v, nn.Module) or hasattr(v, "get_seq_length"):
                raise LayertraceError("a tensor or cache argument the decode path cannot derive")
            if isinstance(v, tuple) and not hasattr(v, "_fields"):
                return tuple(template(x) for x in v)
            if isinstance(v, list):
                return [template(x) for x in v]
            return v

        calls = [_Call(c.module, tuple(template(a) for a in c.args), {k: template(v) for k, v in c.kwargs.items()})
                 for c in state.shared["calls"]]
        return hidden_rule, rules, calls

    def state(self, inputs: Mapping[str, Any], keep: Mapping[str, Tensor]) -> State | None:
        """The State of a cached decoding step, or ``None`` where the replay must run (unlearned case)."""
        case = self._case(inputs, keep)
        self.last_case = (inputs["attention_mask"], case)  # window_steps of the same window reuses it
        learned = self.cases.get(case) if case is not None else None
        if learned is None:
            return None
        hidden_rule, rules, calls = learned
        ids = inputs["input_ids"]
        pos = self._positions(keep)
        hidden = self._hidden(hidden_rule, ids, pos)
        ctx = {"pos": pos, "mask2d": inputs["attention_mask"], "t": ids.shape[1], "hidden": hidden}
        per_sample = dict(keep)
        for key, rule in rules.items():
            per_sample[key] = self._derive(rule, ctx)
        shared = {"calls": calls, "cache": inputs["past_key_values"]}
        return State(hidden=hidden, per_sample=per_sample, shared=shared)

    # --------------------------------------------------------------- one-token steps inside a window
    def window_steps(self, batch: Mapping[str, Any], window: State) -> "Callable[[int, Tensor], State] | None":
        """The one-token decoding steps at the positions of a T-token window, derived from its embed.

        Self-speculative drafting embeds a window of T new positions once (for the verify pass) and then
        decodes its positions one token at a time, the cache holding ``past + j`` tokens at position j.
        Everything such a step's State holds but the token embedding is a slice of the window's: the
        position ids, the 2-D mask's first ``past + j + 1`` columns, the 4-D attention mask's row j
        over those columns (where the window has one: rows with holes or padding), the rotary
        ``(cos, sin)`` of that position (elementwise in the position, so the slice is bit-equal to the
        module's call; checked once per table and mask kind with ``torch.equal``). The returned ``step(j, ids)`` ((B, 1) ids) gives the
        State :meth:`state` would derive for that step, without re-deriving the window's positions
        and masks. ``None`` where the one-token case is not learned or the window is not a cached
        decoding step (then ``adapter.embed`` per step is the way).

        Args:
            batch: the window's batch (``input_ids`` (B, T), ``attention_mask`` (B, past + T),
                ``past_key_values``), as given to ``adapter.embed``.
            window: the State ``adapter.embed(batch)`` returned.
        """
        mask2d = batch.get("attention_mask")
        if mask2d is None or "position_ids" not in window.per_sample:
            return None
        last = self.last_case
        case = last[1] if last[0] is mask2d else self._case(batch, {})  # the window's embed just derived it
        if case is None:
            return None
        learned = self.cases.get((case[0], True, case[2], case[3]))
        if learned is None:
            return None
        hidden_rule, rules, calls = learned
        cache = batch["past_key_values"]
        pos_w = window.per_sample["position_ids"]
        t = int(pos_w.shape[1])
        past = int(mask2d.shape[1]) - t
        window_rules = self.cases.get(case) or (None, {}, None)
        tables = {rule: window.per_sample[key] for key, rule in window_rules[1].items() if rule[0] == "rotary"}
        # a step's 4-D mask is row j of the window's, its first past + j + 1 columns (the window's
        # causal part lets query j see exactly those; the padding part is the same 2-D mask)
        masks = {rule: value for key, rule in window_rules[1].items()
                 if rule[0].startswith("mask") and (value := window.per_sample[key]).dim() == 4 and value.shape[-2] == t}

        # every per-step slice made at once (one split per tensor instead of a slice per step)
        pos_steps = pos_w.split(1, dim=1)
        new_cols = mask2d[:, past:].split(1, dim=1)
        table_steps = {rule: table.split(1, dim=1) for rule, table in tables.items()
                       if table.dim() >= 2 and table.shape[1] == t}
        masked = any(rule[0].startswith("mask") for rule in rules.values())

        def step(j: int, ids: Tensor) -> State:
            pos = pos_steps[j]
            hidden = self._hidden(hidden_rule, ids, pos)
            ctx = {"pos": pos, "t": 1, "hidden": hidden}
            if masked:
                ctx["mask2d"] = mask2d[:, :past + j + 1]
            per_sample = {"attention_mask": new_cols[j], "position_ids": pos}
            for key, rule in rules.items():
                sliced = table_steps.get(rule)
                if sliced is not None or rule in masks:
                    got = sliced[j] if sliced is not None else masks[rule][:, :, j:j + 1, :past + j + 1]
                    if rule not in self.sliced:  # once per table: the slice is what the module returns
                        self.sliced[rule] = torch.equal(got, self._derive(rule, ctx))
                    per_sample[key] = got if self.sliced[rule] else self._derive(rule, ctx)
                else:
                    per_sample[key] = self._derive(rule, ctx)
            return State(hidden=hidden, per_sample=per_sample, shared={"calls": calls, "cache": cache})

        return step


def window_steps(adapter: Any, batch: Mapping[str, Any], window: State) -> "Callable[[int, Tensor], State] | None":
    """:meth:`DecodeStep.window_steps` of ``adapter``'s decode path, or ``None`` (no decode path: an
    adapter without one, a replayed family, an unlearned one-token case): then embed each step."""
    step = getattr(adapter, "_decode_step", None)
    return step.window_steps(batch, window) if step is not None else None
