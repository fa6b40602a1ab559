"""``ClipConfig`` / ``clip_from_config``: what ``layertrace analyze-clip`` runs (docs/clip.md).

Loads a ``transformers.CLIPModel`` (a local ``save_pretrained`` folder, or a hub name with network
access), its tokenizer and its image normalisation, pairs every image of a classification dataset
with a caption made from its class name (``"a photo of a {name}"``), and writes ``clip.json``
(:class:`~layertrace.analysis.clip.ClipSimilarityResult`) and the resolved ``clip-config.yaml``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from ..config import save_config
from ..errors import LayertraceError
from ..io import check_out_dir
from .clip import ClipSimilarityResult, clip_similarity

CONFIG_FILE = "clip-config.yaml"
# OpenAI CLIP's normalisation (CLIPImageProcessor's defaults), used when the folder has no preprocessor_config.json
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class ClipConfig:
    """Everything ``layertrace analyze-clip`` needs; ``--config FILE.yaml`` plus ``--key value`` overrides."""

    model: str = field(default="", metadata={
        "help": "CLIPModel: a save_pretrained folder (config.json + weights + tokenizer files) or a hub name "
                "(hf:openai/clip-vit-base-patch32; needs network access)"})
    data: str = field(default="fashion-mnist", metadata={
        "help": "image classification dataset (any the data layer loads: fashion-mnist, cifar10, hf:<name>, ...)",
        "aliases": ("data.name",)})
    split: str = field(default="test", metadata={"help": "dataset split"})
    limit: int | None = field(default=1000, metadata={"help": "N image / caption pairs (seeded, class-stratified); "
                                                              "none: the whole split", "check": ">= 2"})
    template: str = field(default="a photo of a {}", metadata={
        "help": "caption of each image; {} is replaced by its class name (lower-cased)"})
    center: str = field(default="mean", metadata={"help": "COS centering: mean (the paper's) | none | feature",
                                                  "choices": ("mean", "none", "feature")})
    out: str = field(default="", metadata={"help": "output folder: clip.json and clip-config.yaml"})
    batch_size: int = field(default=64, metadata={"help": "pairs per forward pass", "check": ">= 1"})
    max_length: int | None = field(default=None, metadata={
        "help": "caption token limit (default: the text tower's max_position_embeddings)", "check": ">= 2"})
    data_root: str | None = field(default=None, metadata={"help": "folder of the dataset files (default: embedded copy)",
                                                          "aliases": ("data.root",)})
    loader_kwargs: dict = field(default_factory=dict, metadata={
        "help": "extra options of the dataset loader, e.g. {image_column: img, label_column: label}",
        "aliases": ("data.loader_kwargs",)})
    seed: int = field(default=0, metadata={"help": "seeds the limit subsample"})
    device: str = field(default="auto", metadata={"help": "auto | cpu | cuda | cuda:N"})


def load_clip(spec: str) -> tuple[Any, Any, dict]:
    """``(CLIPModel in eval mode, tokenizer, image preprocessing dict)`` from a folder or a hub name.

    The preprocessing dict has ``image_size``, ``channels``, ``image_mean``, ``image_std`` (from the
    folder's ``preprocessor_config.json`` when there is one, else OpenAI CLIP's values).
    """
    import transformers

    local = Path(spec).is_dir()
    name = spec[3:] if spec.startswith("hf:") and not local else spec
    try:
        model = transformers.CLIPModel.from_pretrained(name)
    except (OSError, ValueError) as exc:
        where = "folder" if local else "hub name"
        raise LayertraceError(f"cannot load a CLIPModel from {where} {spec!r} ({str(exc).splitlines()[0]}); "
                              f"pass a save_pretrained folder, or a hub name with network access") from None
    if not isinstance(model, transformers.CLIPModel):
        raise LayertraceError(f"{spec!r} is a {type(model).__name__}, not a CLIPModel")
    try:
        tokenizer = transformers.AutoTokenizer.from_pretrained(name)
    except (OSError, ValueError):
        raise LayertraceError(f"{spec!r} has no tokenizer files; save the CLIP tokenizer with the model") from None
    vc = model.config.vision_config
    pre: dict[str, Any] = {"image_size": int(vc.image_size), "channels": int(vc.num_channels),
                           "image_mean": list(CLIP_MEAN), "image_std": list(CLIP_STD)}
    try:
        path = Path(name) / "preprocessor_config.json" if local else Path(
            transformers.utils.cached_file(name, "preprocessor_config.json"))
        if path.is_file():
            proc = json.loads(path.read_text())
            for key in ("image_mean", "image_std"):
                if proc.get(key) is not None:
                    pre[key] = [float(x) for x in proc[key]]
    except (OSError, ValueError, TypeError, AttributeError):
        pass  # no processor config: OpenAI CLIP's normalisation
    if len(pre["image_mean"]) != pre["channels"]:  # e.g. a one-channel CLIP: one value per channel
        pre["image_mean"] = pre["image_mean"][:1] * pre["channels"]
        pre["image_std"] = pre["image_std"][:1] * pre["channels"]
    return model.eval(), tokenizer, pre


def captions(class_names: list[str], labels: np.ndarray, template: str) -> list[str]:
    """One caption per sample: ``template`` with its class name, lower-cased (``"a photo of a sandal"``)."""
    if "{}" not in template:
        raise LayertraceError(f"template={template!r} has no {{}} for the class name, e.g. 'a photo of a {{}}'")
    return [template.format(class_names[int(y)].lower()) for y in labels]


class ClipPairs:
    """Re-iterable paired batches: images resized / normalised for the vision tower, captions tokenised.

    Images: uint8 (N, C, H, W) / 255, resized (bicubic, antialiased) to ``image_size`` (a square
    image, so CLIPImageProcessor's shortest-side resize + centre crop is the same resize), grey
    channels repeated to ``channels``, then ``(x - mean) / std`` per channel.
    """

    def __init__(self, images: np.ndarray, texts: list[str], tokenizer: Any, pre: dict, batch_size: int,
                 max_length: int):
        if len(images) != len(texts):
            raise LayertraceError(f"{len(images)} images but {len(texts)} captions; they are paired row by row")
        self.images, self.texts, self.tokenizer, self.pre = images, texts, tokenizer, pre
        self.batch_size, self.max_length = batch_size, max_length

    def __len__(self) -> int:
        return -(-len(self.texts) // self.batch_size)

    def _pixels(self, images: np.ndarray) -> torch.Tensor:
        x = torch.from_numpy(np.ascontiguousarray(images)).float() / 255.0
        size = self.pre["image_size"]
        if x.shape[-2:] != (size, size):
            x = torch.nn.functional.interpolate(x, size=(size, size), mode="bicubic", antialias=True,
                                                align_corners=False).clamp_(0.0, 1.0)
        channels = self.pre["channels"]
        if x.shape[1] != channels:
            if x.shape[1] != 1:
                raise LayertraceError(f"images have {x.shape[1]} channels but the vision tower takes {channels}")
            x = x.expand(-1, channels, -1, -1)
        mean = torch.tensor(self.pre["image_mean"]).view(1, -1, 1, 1)
        std = torch.tensor(self.pre["image_std"]).view(1, -1, 1, 1)
        return (x - mean) / std

    def __iter__(self) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(0, len(self.texts), self.batch_size):
            part = slice(start, start + self.batch_size)
            tok = self.tokenizer(self.texts[part], padding=True, truncation=True, max_length=self.max_length,
                                 return_tensors="pt")
            yield {"pixel_values": self._pixels(self.images[part]), "input_ids": tok["input_ids"],
                   "attention_mask": tok["attention_mask"]}


def clip_from_config(cfg: ClipConfig, write: bool = True) -> ClipSimilarityResult:
    """Load the CLIP model and data of ``cfg``, compute :func:`clip_similarity`, write ``cfg.out``."""
    if not cfg.model:
        raise LayertraceError("no model given: pass --model (a CLIPModel folder, or hf:openai/clip-vit-base-patch32)")
    if write:
        check_out_dir(cfg.out)
    from ..data import load_dataset
    from .run import resolve_device

    device = resolve_device(cfg.device)
    ds = load_dataset(cfg.data, cfg.split, root=cfg.data_root, seed=cfg.seed, limit=cfg.limit, **cfg.loader_kwargs)
    if not hasattr(ds, "images"):
        raise LayertraceError(f"dataset {cfg.data!r} holds texts; analyze-clip needs an image classification "
                              f"dataset (its class names become the captions)")
    model, tokenizer, pre = load_clip(cfg.model)
    model.to(device)
    max_length = int(cfg.max_length or model.config.text_config.max_position_embeddings)
    texts = captions(ds.class_names, ds.labels, cfg.template)
    pairs = ClipPairs(ds.images, texts, tokenizer, pre, cfg.batch_size, max_length)
    result = clip_similarity(model, pairs, cfg.center, model_name=cfg.model, data_name=cfg.data)
    result.config.update(split=cfg.split, limit=cfg.limit, template=cfg.template, seed=cfg.seed, device=str(device),
                         batch_size=cfg.batch_size, max_length=max_length, preprocess=pre,
                         example_caption=texts[0])
    if write:
        out = Path(cfg.out)
        result.save(out)
        save_config(cfg, out, name=CONFIG_FILE)
    return result
