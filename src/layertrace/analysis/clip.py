"""CLIP within- and cross-modal similarity per layer (the paper's App. B, Figs. 22-23; docs/clip.md).

For a CLIP dual encoder and paired image / text batches (image i goes with caption i), every layer's
vision [CLS] token and text [EOS] token is mapped through the tower's *own* last-layer head, the
final LayerNorm and the projection (the paper's Eq. 23: ``v_l = W_v LN_v(h^v_l[CLS])``,
``t_l = W_t LN_t(h^t_l[EOS])``), so every layer lives in the shared embedding space. Then

* within each tower: ``COS(v_l, v_L)`` and ``COS(t_m, t_L)`` (and the full within-tower matrices);
* across towers: ``COS(v_l, t_L)``, ``COS(t_m, v_L)`` and the full ``(Lv+1, Lt+1)`` matrix
  ``COS(v_l, t_m)``, each the mean over *pairs* of the cosine between a sample's image feature and
  its own caption's feature (:func:`layertrace.metrics.cos_matrix`, same centering options).

The towers are served by :func:`layertrace.models.adapt` (CLIP vision / text towers with projection:
``readout`` is the model's own ``image_embeds`` / ``text_embeds`` path), built on the CLIP model's
own modules (no copy of the weights).
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping

import numpy as np
import torch

from ..errors import LayertraceError
from ..io import read_json, write_json
from ..metrics import DegenerateLayerWarning, cos_matrix
from ..run_folder import CLIP

CLIP_NAME = CLIP
CLIP_PARTS = ("vision_model", "text_model", "visual_projection", "text_projection")
# A layer whose features vary across samples by less than this (relative to their mean's norm) is
# input-independent up to float32 rounding (a ViT's [CLS] at layer 0): its rounding noise, which differs
# with the batch size, must not be read as a direction once the mean is subtracted.
CONSTANT_RTOL = 1e-5


def clip_towers(model: Any) -> tuple[Any, Any]:
    """``(vision adapter, text adapter)`` of a ``transformers.CLIPModel``, sharing its weights.

    Each tower is a ``CLIPVisionModelWithProjection`` / ``CLIPTextModelWithProjection`` whose
    modules *are* the CLIP model's (built on the meta device, then given the model's own
    submodules), adapted with :func:`layertrace.models.adapt` (which self-checks it). An adapter's
    ``trace(batch).logits`` (L+1, B, p) is then every layer's feature through the final LayerNorm
    and projection; at layer L it equals ``model.get_image_features`` / ``get_text_features``.
    """
    import transformers

    from ..models import adapt

    missing = [p for p in CLIP_PARTS if getattr(model, p, None) is None]
    if missing:
        raise LayertraceError(f"{type(model).__name__} is not a CLIP dual encoder (no {', '.join(missing)}); "
                              f"pass a transformers.CLIPModel (e.g. openai/clip-vit-base-patch32)")
    with torch.device("meta"):
        vision = transformers.CLIPVisionModelWithProjection(model.config.vision_config)
        text = transformers.CLIPTextModelWithProjection(model.config.text_config)
    vision.vision_model, vision.visual_projection = model.vision_model, model.visual_projection
    text.text_model, text.text_projection = model.text_model, model.text_projection
    vision.train(model.training)
    text.train(model.training)
    return adapt(vision), adapt(text)


@dataclass
class ClipSimilarityResult:
    """Per-layer CLIP similarity (``clip.json``). Lists run over ``vision_layers`` / ``text_layers`` (0..L).

    Attributes:
        vision_cos_to_last: (Lv+1,) COS(v_l, v_L).
        text_cos_to_last: (Lt+1,) COS(t_m, t_L).
        vision_to_text_last: (Lv+1,) COS(v_l, t_L): each image's layer-l feature vs its caption's last.
        text_to_vision_last: (Lt+1,) COS(t_m, v_L).
        cross_matrix: (Lv+1, Lt+1) COS(v_l, t_m) over pairs.
        vision_cos_matrix / text_cos_matrix: within-tower (L+1, L+1) matrices.
        projection_dim: p, the shared embedding width.
        constant_layers: ``{"vision": [...], "text": [...]}`` layers whose feature does not depend on
            the input (up to float32 rounding, e.g. the vision [CLS] at layer 0); under mean centering
            they have no direction: COS 0 with every other layer (1 with themselves).
    """

    model: str
    data: str
    n_pairs: int
    center: str
    projection_dim: int
    vision_layers: list[int]
    text_layers: list[int]
    vision_cos_to_last: np.ndarray
    text_cos_to_last: np.ndarray
    vision_to_text_last: np.ndarray
    text_to_vision_last: np.ndarray
    cross_matrix: np.ndarray
    vision_cos_matrix: np.ndarray
    text_cos_matrix: np.ndarray
    constant_layers: dict = field(default_factory=lambda: {"vision": [], "text": []})
    config: dict = field(default_factory=dict)

    ARRAYS = ("vision_cos_to_last", "text_cos_to_last", "vision_to_text_last", "text_to_vision_last",
              "cross_matrix", "vision_cos_matrix", "text_cos_matrix")

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"kind": "clip_similarity"}
        for key in ("model", "data", "n_pairs", "center", "projection_dim", "vision_layers", "text_layers"):
            out[key] = getattr(self, key)
        for key in self.ARRAYS:
            out[key] = np.asarray(getattr(self, key)).tolist()
        out["constant_layers"] = {k: list(v) for k, v in self.constant_layers.items()}
        out["config"] = dict(self.config)
        return out

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "ClipSimilarityResult":
        missing = [k for k in ("vision_layers", "text_layers", *cls.ARRAYS) if k not in data]
        if missing:
            raise LayertraceError(f"not a {CLIP_NAME}: missing {', '.join(missing)}; re-run `layertrace analyze-clip`")
        return cls(model=str(data.get("model", "")), data=str(data.get("data", "")), n_pairs=int(data["n_pairs"]),
                   center=str(data.get("center", "mean")), projection_dim=int(data.get("projection_dim", 0)),
                   vision_layers=[int(x) for x in data["vision_layers"]],
                   text_layers=[int(x) for x in data["text_layers"]],
                   **{k: np.asarray(data[k], dtype=np.float64) for k in cls.ARRAYS},
                   constant_layers=dict(data.get("constant_layers") or {"vision": [], "text": []}),
                   config=dict(data.get("config") or {}))

    def save(self, out_dir: str | Path) -> Path:
        """Write ``out_dir/clip.json`` atomically; returns its path."""
        path = Path(out_dir) / CLIP_NAME
        write_json(path, self.to_dict())
        return path

    @classmethod
    def from_json(cls, path: str | Path) -> "ClipSimilarityResult":
        """Read ``clip.json`` (or the folder holding it)."""
        path = Path(path)
        return cls.from_dict(read_json(path / CLIP_NAME if path.is_dir() else path,
                                       "re-run `layertrace analyze-clip`"))


def projected_features(model: Any, batches: Iterable[Mapping[str, Any]]) -> tuple[torch.Tensor, torch.Tensor]:
    """Every layer's projected features of paired batches: ``(vision (Lv+1, n, p), text (Lt+1, n, p))``.

    ``batches``: dicts with ``pixel_values`` (B, C, H, W), ``input_ids`` and ``attention_mask`` (B, T);
    row i of the images is paired with row i of the texts. Float32 on CPU (n x (Lv+Lt+2) x p floats).
    """
    vision, text = model if isinstance(model, tuple) else clip_towers(model)
    vs, ts = [], []
    with torch.no_grad():
        for batch in batches:
            if "pixel_values" not in batch or "input_ids" not in batch:
                raise LayertraceError("a CLIP batch needs pixel_values and input_ids (paired rows); got keys "
                                      f"{sorted(batch)}")
            pixels = batch["pixel_values"]
            texts = {k: batch[k] for k in ("input_ids", "attention_mask") if k in batch}
            if pixels.shape[0] != texts["input_ids"].shape[0]:
                raise LayertraceError(f"a CLIP batch pairs images with captions row by row, but it has "
                                      f"{pixels.shape[0]} images and {texts['input_ids'].shape[0]} captions")
            vs.append(vision.trace({"pixel_values": pixels}).logits.float().cpu())
            ts.append(text.trace(texts).logits.float().cpu())
    if not vs:
        raise LayertraceError("no batches given: pass at least one batch of image / caption pairs")
    return torch.cat(vs, dim=1), torch.cat(ts, dim=1)


def clip_similarity_from_features(v: Any, t: Any, center: str = "mean", *, model_name: str = "",
                                  data_name: str = "") -> ClipSimilarityResult:
    """Within- and cross-modal COS of paired features ``v`` (Lv+1, n, p) and ``t`` (Lt+1, n, p).

    One :func:`~layertrace.metrics.cos_matrix` over the stacked (Lv+Lt+2, n, p) features, split into
    its vision, text and cross blocks, so all three use the same per-pair cosine and centering.
    """
    v = torch.as_tensor(v)
    t = torch.as_tensor(t)
    if v.ndim != 3 or t.ndim != 3 or v.shape[1:] != t.shape[1:]:
        raise LayertraceError(f"vision features {tuple(v.shape)} and text features {tuple(t.shape)} must be "
                              f"(layers, pairs, p) with the same pairs and projection width")
    lv = v.shape[0]
    constant = {"vision": [], "text": []}
    if center == "mean":
        v, constant["vision"] = _snap_constant_layers(v)
        t, constant["text"] = _snap_constant_layers(t)
    with warnings.catch_warnings():  # constant layers are reported in the result, with their tower's index
        warnings.simplefilter("ignore", DegenerateLayerWarning)
        full = cos_matrix(torch.cat([v, t.to(v.dtype)], dim=0), center=center)
    vv, tt, vt = full[:lv, :lv], full[lv:, lv:], full[:lv, lv:]
    return ClipSimilarityResult(
        model=model_name, data=data_name, n_pairs=int(v.shape[1]), center=center, projection_dim=int(v.shape[2]),
        vision_layers=list(range(lv)), text_layers=list(range(t.shape[0])),
        vision_cos_to_last=vv[:, -1].copy(), text_cos_to_last=tt[:, -1].copy(),
        vision_to_text_last=vt[:, -1].copy(), text_to_vision_last=vt[-1, :].copy(),
        cross_matrix=vt.copy(), vision_cos_matrix=vv.copy(), text_cos_matrix=tt.copy(), constant_layers=constant)


def _snap_constant_layers(x: torch.Tensor) -> tuple[torch.Tensor, list[int]]:
    """Replace layers of ``x`` (L, n, p) that are constant up to :data:`CONSTANT_RTOL` by their exact mean."""
    x64 = x.to(torch.float64)
    mean = x64.mean(dim=1, keepdim=True)
    spread = (x64 - mean).norm(dim=2).amax(dim=1)  # (L,)
    scale = mean[:, 0].norm(dim=1)
    layers = [int(i) for i in torch.nonzero(spread <= CONSTANT_RTOL * scale).flatten()]
    if layers:
        x64 = x64.clone()
        x64[layers] = mean[layers].expand(-1, x.shape[1], -1)
    return x64, layers


def clip_similarity(model: Any, batches: Iterable[Mapping[str, Any]], center: str = "mean", *,
                    model_name: str = "", data_name: str = "") -> ClipSimilarityResult:
    """CLIP within- and cross-modal COS per layer (Eq. 23 features) over paired image / caption batches.

    Args:
        model: a ``transformers.CLIPModel`` (or the ``(vision, text)`` adapters of :func:`clip_towers`).
        batches: dicts with ``pixel_values`` (B, C, H, W), ``input_ids`` / ``attention_mask`` (B, T);
            image i is paired with caption i.
        center: COS centering (``mean``, the paper's; ``none``; ``feature``), see layertrace.metrics.

    Returns:
        :class:`ClipSimilarityResult` (``.save(dir)`` writes ``clip.json``).
    """
    v, t = projected_features(model, batches)
    return clip_similarity_from_features(v, t, center, model_name=model_name, data_name=data_name)
