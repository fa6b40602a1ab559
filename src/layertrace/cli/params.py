"""``layertrace params``: parameters with one shared head vs one head per layer (the paper's Table 1).

Examples::

    layertrace params                                   # the paper's rows: deit-s, deit-b, gpt2-small
    layertrace params --model vit-demo --flops          # a preset, plus measured FLOPs per layer
    layertrace params --model runs/fmnist-vit-aligned   # a run folder / save_pretrained folder
    layertrace params --hidden-size 384 --num-classes 1000 --layers 12 --base-params 22050664
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional

from ..config import add_config_args, config_from_args
from ..errors import LayertraceError

HELP = "parameter counts: one shared head vs one head per layer (the paper's Table 1)"

# The paper's Table 1 rows (Jiang et al., ICLR 2025): preset -> (per-layer heads, shared head), in millions.
PAPER_ROWS: dict[str, tuple[float, float]] = {
    "deit-s": (26.27, 22.05),
    "deit-b": (95.02, 86.57),
    "gpt2-small": (541.57, 117.35),
}


@dataclass
class ParamsConfig:
    """Options of ``layertrace params``."""

    model: Optional[str] = field(default=None, metadata={
        "help": "preset name(s), comma separated, or a model / run folder (default: the paper's rows "
                "deit-s,deit-b,gpt2-small unless a plain config is given)"})
    num_classes: Optional[int] = field(default=None, metadata={
        "help": "classes K (causal LMs: vocabulary); with --model it overrides the preset's head", "check": ">= 1"})
    hidden_size: Optional[int] = field(default=None, metadata={"help": "plain config: hidden size d", "check": ">= 1"})
    layers: Optional[int] = field(default=None, metadata={"help": "plain config: number of blocks L", "check": ">= 1"})
    base_params: Optional[int] = field(default=None, metadata={
        "help": "plain config: parameters of the shared-head model (to print both totals)", "check": ">= 1"})
    convention: str = field(default="paper", metadata={
        "help": "paper (an extra head = its K x d weights, Table 1) | copied_heads (full head path per layer, "
                "as the multi-head baseline trains it)", "choices": ("paper", "copied_heads")})
    flops: bool = field(default=False, metadata={
        "help": "also measure forward FLOPs per layer (embedding, each block, head) on one input"})
    out: Optional[str] = field(default=None, metadata={"help": "also write params.json into this folder"})


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_args(parser, ParamsConfig)


def _millions(n: int | None) -> str:
    return "-" if n is None else f"{n / 1e6:.2f}M"


def _load_for_count(spec: str, num_classes: int | None) -> Any:
    """An adapter for counting: presets built on the meta device (instant), folders loaded normally."""
    from ..models import adapt, load_model
    from ..models.presets import PRESETS, build_preset

    if spec in PRESETS and PRESETS[spec].config is not None:
        return adapt(build_preset(spec, num_classes, device="meta")), dict(PRESETS[spec].preprocess)
    loaded = load_model(spec, num_classes=num_classes)
    return loaded.adapter, loaded.preprocess


def _dummy_batch(adapter: Any, preprocess: dict) -> dict:
    import torch

    if preprocess.get("modality") == "image":
        size = int(preprocess["image_size"])
        return {"pixel_values": torch.zeros(1, int(preprocess["channels"]), size, size)}
    length = int(preprocess.get("max_length", 128))
    return {"input_ids": torch.ones(1, length, dtype=torch.long), "attention_mask": torch.ones(1, length, dtype=torch.long)}


def _flops_lines(name: str, adapter: Any, preprocess: dict) -> tuple[list[str], dict]:
    from ..models.cost import layer_flops

    if adapter.device.type == "meta":  # FLOPs need real tensors: rebuild small presets on the CPU
        from ..models import adapt
        from ..models.presets import build_preset

        adapter = adapt(build_preset(name, adapter.num_outputs))
    batch = _dummy_batch(adapter, preprocess)
    flops = layer_flops(adapter, batch)
    unit = f"per sample, {flops.seq_len} tokens"
    lines = [f"  FLOPs {name} ({unit}): embed {flops.embed / 1e6:.2f}M, block {flops.blocks[0] / 1e6:.2f}M "
             f"x {flops.n_layers}, head {flops.head / 1e6:.3f}M, full {flops.full() / 1e6:.2f}M"]
    return lines, flops.to_dict()


def run(args: argparse.Namespace) -> int:
    from ..models.cost import compare_params, compare_params_config

    cfg = config_from_args(ParamsConfig, args)
    if cfg.out:
        from ..io import check_out_dir

        check_out_dir(cfg.out)
    plain = [cfg.hidden_size, cfg.layers]
    rows = []
    extra_lines: list[str] = []
    flops_json: dict[str, Any] = {}
    if cfg.model is None and any(v is not None for v in plain):
        if cfg.hidden_size is None or cfg.layers is None or cfg.num_classes is None:
            raise LayertraceError("a plain config needs --hidden-size, --num-classes and --layers (and optionally --base-params)")
        rows.append(compare_params_config(cfg.layers, cfg.hidden_size, cfg.num_classes, cfg.base_params))
        if cfg.flops:
            raise LayertraceError("--flops needs a model (--model PRESET|DIR), not a plain config")
    else:
        specs = [s.strip() for s in (cfg.model or ",".join(PAPER_ROWS)).split(",") if s.strip()]
        for spec in specs:
            adapter, preprocess = _load_for_count(spec, cfg.num_classes)
            name = Path(spec).name if Path(spec).exists() else spec
            rows.append(compare_params(adapter, name=name, convention=cfg.convention))
            if cfg.flops:
                lines, data = _flops_lines(spec, adapter, preprocess)
                extra_lines += lines
                flops_json[name] = data

    header = f"{'model':<16} {'L':>3} {'d':>5} {'K':>6}  {'shared head':>12} {'per-layer heads':>16} {'extra':>9} {'saved':>6}"
    print(f"Parameters: one shared head vs one head per layer (convention: {cfg.convention})")
    print(header)
    print("-" * len(header))
    for row in rows:
        saved = "-" if row.saving is None else f"{100 * row.saving:.1f}%"
        print(f"{row.name:<16} {row.n_layers:>3} {row.hidden_size:>5} {row.num_classes:>6}  "
              f"{_millions(row.shared_head):>12} {_millions(row.per_layer_heads):>16} {_millions(row.extra):>9} {saved:>6}")
        if row.name in PAPER_ROWS and cfg.convention == "paper":
            per_layer, shared = PAPER_ROWS[row.name]
            print(f"{'  paper':<16} {'':>3} {'':>5} {'':>6}  {shared:>11.2f}M {per_layer:>15.2f}M")
    if any(r.name == "gpt2-small" for r in rows) and cfg.convention == "paper":
        print("note: the paper's GPT-2 row (117.35M -> 541.57M) does not follow from GPT-2 small's 124.44M "
              "parameters; see docs/models.md")
    for line in extra_lines:
        print(line)
    if cfg.out:
        from ..io import write_json

        out = Path(cfg.out)
        out.mkdir(parents=True, exist_ok=True)
        write_json(out / "params.json", {"convention": cfg.convention, "rows": [r.to_dict() for r in rows],
                                         "flops": flops_json})
        print(f"wrote {out / 'params.json'}")
    return 0
