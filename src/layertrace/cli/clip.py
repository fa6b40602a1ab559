"""``layertrace analyze-clip --model CLIP --data fashion-mnist --out DIR``.

CLIP within- and cross-modal similarity per layer (the paper's App. B, Figs. 22-23): every layer's
vision [CLS] / text [EOS] token through the tower's final LayerNorm + projection (Eq. 23), COS to the
last layer in each tower and across towers, over images paired with "a photo of a {class}" captions.
Writes ``clip.json`` and ``clip-config.yaml``; ``layertrace report DIR`` draws them. docs/clip.md.
"""

from __future__ import annotations

import argparse

from ..config import add_config_args, config_from_args

HELP = "CLIP within- and cross-modal COS per layer (vision [CLS] / text [EOS] through LN + projection)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ..analysis.clip_run import ClipConfig

    add_config_args(parser, ClipConfig)


def run(args: argparse.Namespace) -> int:
    from ..analysis.clip_run import ClipConfig, clip_from_config

    cfg = config_from_args(ClipConfig, args)
    r = clip_from_config(cfg)
    print(f"{r.model} on {r.data}: {r.n_pairs} image / caption pairs (e.g. {r.config.get('example_caption')!r}), "
          f"vision layers 0..{r.vision_layers[-1]}, text layers 0..{r.text_layers[-1]}, p={r.projection_dim} "
          f"-> {cfg.out}/clip.json")
    print("COS(v_l, v_L):", " ".join(f"{x:.3f}" for x in r.vision_cos_to_last))
    print("COS(t_l, t_L):", " ".join(f"{x:.3f}" for x in r.text_cos_to_last))
    print("COS(v_l, t_L):", " ".join(f"{x:.3f}" for x in r.vision_to_text_last))
    print("COS(t_l, v_L):", " ".join(f"{x:.3f}" for x in r.text_to_vision_last))
    return 0
