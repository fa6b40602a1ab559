"""The discovery adapter's probe batch and self-check (run by ``adapt``), and where a model's inputs go
(Accelerate placement)."""

from __future__ import annotations

import inspect
import time
from typing import Any, Mapping

import torch
from torch import Tensor, nn

from ..errors import LayertraceError
from .base import Adapter
from .head_discovery import _output_of, model_kind, positions_from_mask


def dispatched_fast(model: nn.Module) -> bool:
    """Accelerate placed the model (``device_map`` or a hook on the model itself); O(1), unlike :func:`dispatched`."""
    return getattr(model, "hf_device_map", None) is not None or hasattr(model, "_hf_hook")


def _vocab(cfg: Any) -> int:
    for c in (cfg, getattr(cfg, "text_config", None)):
        v = getattr(c, "vocab_size", None)
        if v:
            return int(v)
    return 100


def probe_batch(model: nn.Module, batch_size: int = 2, tokens: int = 6, seed: int = 0) -> dict[str, Tensor]:
    """A tiny batch the model takes: (B, T) token ids with row 1 padded by 2 (left for causal LMs,
    right otherwise), or (B, C, H, W) random pixels. On the model's input device."""
    cfg = model.config
    device = _input_device(model)
    g = torch.Generator().manual_seed(seed)
    sig = inspect.signature(model.forward).parameters
    if "pixel_values" in sig:
        cfg = getattr(cfg, "vision_config", None) or cfg
        size = getattr(cfg, "image_size", 32)
        size = size if isinstance(size, int) else int(size[0])
        ch = int(getattr(cfg, "num_channels", 3))
        pixels = torch.randn(batch_size, ch, size, size, generator=g)
        return {"pixel_values": pixels.to(device=device, dtype=_float_dtype(model))}
    vocab = _vocab(cfg)
    pad = getattr(cfg, "pad_token_id", None)
    pad = 0 if pad is None or pad >= vocab else int(pad)
    low = 3 if vocab > 8 else 0
    ids = torch.randint(low, vocab, (batch_size, tokens), generator=g)
    ids[ids == pad] = low if low != pad else low + 1
    mask = torch.ones(batch_size, tokens, dtype=torch.long)
    if batch_size > 1:
        if model_kind(model) == "causal_lm":
            mask[1, :2] = 0
        else:
            mask[1, -2:] = 0
    ids[mask == 0] = pad
    return {"input_ids": ids.to(device), "attention_mask": mask.to(device)}


def dispatched(model: nn.Module) -> bool:
    """The model was dispatched by Accelerate (``device_map``): its hooks place / load each module."""
    return getattr(model, "hf_device_map", None) is not None or any(
        hasattr(m, "_hf_hook") for m in model.modules())


def unmaterialised(model: nn.Module) -> bool:
    """Parameters on ``meta`` that no Accelerate hook will load (nothing can run)."""
    return any(p.is_meta for p in model.parameters()) and not dispatched(model)


def _float_dtype(model: nn.Module) -> torch.dtype:
    for p in model.parameters():
        if p.is_floating_point():
            return p.dtype
    return torch.float32


def _input_device(model: nn.Module) -> torch.device:
    """The device inputs go to (the embedding's execution device under Accelerate)."""
    try:
        emb = model.get_input_embeddings()
    except (NotImplementedError, AttributeError):
        emb = None
    hook = getattr(emb, "_hf_hook", None)
    if hook is not None and getattr(hook, "execution_device", None) is not None:
        return torch.device(hook.execution_device)
    weight = getattr(emb, "weight", None)
    if weight is None and isinstance(emb, nn.Module):  # e.g. ViT's patch embedding: its projection's weight
        weight = next(emb.parameters(), None)
    if hook is None and isinstance(weight, Tensor) and not weight.is_meta and not dispatched_fast(model):
        return weight.device  # inputs go where the embedding is (listing every parameter costs ~1 block)
    main_device = getattr(model, "_hf_hook", None)
    if main_device is not None and getattr(main_device, "execution_device", None) is not None:
        return torch.device(main_device.execution_device)
    device_map = getattr(model, "hf_device_map", None)
    if device_map:
        first = next(iter(device_map.values()))
        return torch.device("cpu" if first in ("disk", "cpu") else (f"cuda:{first}" if isinstance(first, int)
                                                                    else first))
    devices = [p.device for p in model.parameters()]
    return next((d for d in devices if d.type != "meta"), devices[0] if devices else torch.device("cpu"))


# class name -> "verified" or the one-line reason a self-check failed, for this process
VERIFIED: dict[str, str] = {}


def _close(a: Tensor, b: Tensor, what: str, name: str) -> None:
    a, b = a.float(), b.float().to(a.device)
    if a.shape != b.shape:
        raise LayertraceError(f"{name} failed the self-check: {what} has shape {tuple(a.shape)} vs the model's "
                              f"{tuple(b.shape)}; pass check=False only if you know why")
    tol = 1e-4 * (1.0 + float(b.abs().max())) if b.dtype == torch.float32 else 2e-2 * (1.0 + float(b.abs().max()))
    err = float((a - b).abs().max()) if a.numel() else 0.0
    if not err <= tol:
        raise LayertraceError(f"{name} failed the self-check: {what} differs from the model by {err:.3g} "
                              f"(tolerance {tol:.2g}); pass check=False only if you know why")


@torch.no_grad()
def run_self_check(adapter: Adapter, batch: Mapping[str, Any] | None = None, hf: bool = False) -> float:
    """Check the adapter against its model on one tiny batch; raise a one-line error naming the check.

    Checks: readout of layer L == the model's own output (``model_logits`` for a GenericAdapter);
    HF models: every layer l < L == ``output_hidden_states[l]`` (real tokens); ``State.select`` of one sample + block by block == that sample's row; causal LMs:
    cached incremental decoding of the last token == the full forward. Runs in eval mode (restored).

    Returns:
        seconds it took.
    """
    model = adapter.model
    name = type(model).__name__
    start = time.perf_counter()
    modes = [(m, m.training) for m in adapter.modules()]
    adapter.eval()
    try:
        batch = dict(batch) if batch is not None else probe_batch(model)
        inputs = adapter.model_inputs(batch)
        lm = adapter.kind == "causal_lm"
        hs = None
        if hf:  # an HFAutoAdapter: one forward gives the reference output and every layer
            if lm and "position_ids" not in inputs and adapter._takes_position_ids:
                t = inputs["input_ids"].shape[1]
                inputs["position_ids"] = positions_from_mask(inputs["attention_mask"], t)
            out = model(**inputs, output_hidden_states=True)
            ref = _output_of(out, adapter.spec.output)
            hs = getattr(out, "hidden_states", None)
        else:  # GenericAdapter: its model_logits callable is the reference
            ref = adapter.model_logits(batch)
        states = [adapter.embed(batch)]
        for layer in range(1, adapter.n_layers + 1):
            states.append(adapter.block(layer, states[-1]))
        got = adapter.readout(adapter.features(states[-1]))
        real = batch.get("attention_mask")
        real = real.bool().to(got.device) if (isinstance(real, Tensor) and "input_ids" in batch) else None
        if lm and real is not None:
            _close(got[real], ref[real], "the readout of the last layer", name)
        else:
            _close(got, ref, "the readout of the last layer", name)
        if hs is not None:
            if len(hs) != adapter.n_layers + 1:
                raise LayertraceError(f"{name} failed the self-check: output_hidden_states has {len(hs)} entries "
                                      f"for {adapter.n_layers} traced blocks")
            for layer in range(adapter.n_layers):
                a, b = states[layer].hidden, hs[layer].to(states[layer].hidden.device)
                if real is not None and a.shape[:2] == real.shape:
                    a, b = a[real], b[real]
                _close(a, b, f"layer {layer} (vs output_hidden_states)", name)
        if states[0].batch_size > 1:
            one = states[0].select([1])
            for layer in range(1, adapter.n_layers + 1):
                one = adapter.block(layer, one)
            row = adapter.readout(adapter.features(one))
            if lm and real is not None:
                _close(row[0][real[1]], got[1][real[1]], "State.select + block by block", name)
            else:
                _close(row[0], got[1], "State.select + block by block", name)
        if lm and hasattr(adapter, "new_cache") and "input_ids" in batch and "attention_mask" in batch:
            ids, mask = batch["input_ids"], batch["attention_mask"]
            cache = adapter.new_cache()
            state = adapter.embed({"input_ids": ids[:, :-1], "attention_mask": mask[:, :-1], "past_key_values": cache})
            for layer in range(1, adapter.n_layers + 1):
                state = adapter.block(layer, state)
            state = adapter.embed({"input_ids": ids[:, -1:], "attention_mask": mask, "past_key_values": cache})
            for layer in range(1, adapter.n_layers + 1):
                state = adapter.block(layer, state)
            _close(adapter.readout(adapter.features(state))[:, -1], got[:, -1], "cached incremental decoding", name)
    finally:
        for m, mode in modes:
            m.training = mode
    return time.perf_counter() - start
