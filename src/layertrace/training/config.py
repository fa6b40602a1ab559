"""The typed training config: ``model``, ``data`` and ``train`` sections (``layertrace train --help``).

Load with ``layertrace.config.load_config(TrainConfig, "configs/train-vit-fmnist.yaml",
{"train.mode": "aligned"})``; every key is also a command-line option (``--train.lr 3e-4``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional, Union


def _h(text: str, **extra: Any) -> dict:
    return {"help": text, **extra}


@dataclass
class ModelSection:
    """Which model to train."""

    spec: str = field(default="vit-demo", metadata=_h(
        "model: a preset (vit-demo, vit-demo-12, deit-s, minilm-cls, gpt2-tiny, ...), a local HF folder or "
        "run folder, or hf:<hub name> when online"))
    num_classes: Optional[int] = field(default=None, metadata=_h(
        "classes of a classifier head; default: taken from the training data", check=">= 1"))
    tokenizer: Optional[str] = field(default=None, metadata=_h(
        "tokenizer folder for causal-LM presets, which carry none (default: the model's own)"))
    final_norm: bool = field(default=True, metadata=_h(
        "apply the final norm in the shared readout (false reproduces the authors' GPT-2 code)"))
    pooling: Optional[str] = field(default=None, metadata=_h(
        "prediction feature of classifiers: auto (the model's own head's choice) | cls | mean (masked) | last "
        "(last non-pad token); stored with the run, so exit / export / analyze read it the same way; default: "
        "a run folder's stored pooling, else auto"))


@dataclass
class DataSection:
    """Which data to train and evaluate on."""

    name: str = field(default="fashion-mnist", metadata=_h(
        "dataset: fashion-mnist, mnist-5k, rotten-tomatoes, bbc-news, cifar10, hf:glue/sst2, a text corpus "
        "(wikitext / a local .txt) for causal LMs, ..."))
    root: Optional[str] = field(default=None, metadata=_h("local folder / file with the data (default: embedded copy)"))
    loader_kwargs: dict = field(default_factory=dict, metadata=_h(
        "extra options of the dataset loader, e.g. {config: sst2} for hf:glue, {config: wikitext-103-raw-v1}"))
    train_split: str = field(default="train", metadata=_h("split to train on"))
    eval_split: str = field(default="test", metadata=_h("split for the periodic and final layer-wise evaluation"))
    train_limit: Optional[int] = field(default=None, metadata=_h("use only the first N training samples (after the seeded shuffle)", check=">= 1"))
    eval_limit: Optional[int] = field(default=2000, metadata=_h("evaluate on at most N samples (none = all)", check=">= 1"))
    max_length: int = field(default=128, metadata=_h("text: tokens per example; causal LM: tokens per training block", check=">= 2"))
    group_by_length: bool = field(default=False, metadata=_h(
        "text classification: put sentences of similar length in the same training batch (sorted within "
        "random groups of 50 batches, batch order shuffled) so less padding is computed; HF's group_by_length"))
    augment: bool = field(default=False, metadata=_h(
        "images: the paper's augmentation (random crop with padding, horizontal flip, rotation)"))
    crop_padding: int = field(default=4, metadata=_h("augmentation: pad by P pixels, then crop back at a random offset", check=">= 0"))
    hflip: bool = field(default=True, metadata=_h("augmentation: random horizontal flip"))
    rotation_degrees: float = field(default=15.0, metadata=_h("augmentation: random rotation in [-R, R] degrees", check="[0, 180]"))


@dataclass
class TrainSection:
    """How to train: mode, schedule, precision, logging, checkpoints."""

    mode: str = field(default="standard", metadata=_h(
        "standard | aligned | aligned-alternating | multi-head | cos-reg"))
    layers: Union[int, str, list] = field(default="1:", metadata=_h(
        "layers taking part in the layer-wise loss (resolve_layers spec over 0..L; default 1..L)"))
    layer_weights: Union[str, list] = field(default="linear", metadata=_h(
        "linear (2l/(L(L+1)), the paper's) | uniform | last | a list with one weight per trained layer"))
    alternate: bool = field(default=False, metadata=_h(
        "multi-head / cos-reg: odd steps plain last-layer CE, even steps the layer-wise loss"))
    cos_beta: float = field(default=1.0, metadata=_h("cos-reg: weight beta of the cosine term", check=">= 0"))
    distill: float = field(default=0.0, metadata=_h(
        "aligned / multi-head: self-distillation weight beta in [0, 1): layers below L are scored by "
        "(1 - beta) CE + beta KL(p_L || p_l) against the last layer's detached prediction (aimed at draft "
        "agreement for self-speculative decoding, measured in docs/lm.md; 0 = the paper's loss)", check="[0, 1)"))
    epochs: float = field(default=1.0, metadata=_h("passes over the training data (ignored when steps is set)", check="> 0"))
    steps: Optional[int] = field(default=None, metadata=_h("optimizer steps (overrides epochs)", check=">= 1"))
    batch_size: int = field(default=32, metadata=_h("global batch per optimizer step (all processes, all accumulation micro-batches)", check=">= 1"))
    grad_accum: int = field(default=1, metadata=_h("gradient accumulation micro-batches per optimizer step", check=">= 1"))
    lr: float = field(default=1e-3, metadata=_h("peak learning rate (AdamW)", check="> 0"))
    weight_decay: float = field(default=0.05, metadata=_h("AdamW weight decay (not applied to biases and norms)", check=">= 0"))
    adam_betas: list = field(default_factory=lambda: [0.9, 0.999], metadata=_h("AdamW betas", check="[0, 1)", length=2))
    schedule: str = field(default="cosine", metadata=_h("cosine | multistep | linear | constant (all after warmup)",
                                                            choices=("cosine", "multistep", "linear", "constant")))
    warmup_ratio: float = field(default=0.05, metadata=_h("warmup steps as a fraction of all steps", check="[0, 1)"))
    warmup_steps: Optional[int] = field(default=None, metadata=_h("warmup steps (overrides warmup_ratio)", check=">= 0"))
    min_lr_ratio: float = field(default=0.0, metadata=_h("cosine / linear: final lr as a fraction of the peak", check="[0, 1]"))
    milestones: list = field(default_factory=lambda: [0.5, 0.75], metadata=_h(
        "multistep: steps (ints >= 1) or fractions of all steps (< 1) where the lr is multiplied by gamma", check="> 0", each=True))
    gamma: float = field(default=0.1, metadata=_h("multistep: lr factor at each milestone", check="(0, 1]"))
    clip_grad: Optional[float] = field(default=1.0, metadata=_h("clip the global gradient norm (none = off)", check="> 0"))
    seed: int = field(default=0, metadata=_h("seed of the model init, data order, augmentation and dropout"))
    precision: str = field(default="auto", metadata=_h(
        "auto (bf16 on a GPU that has it, else fp32) | fp32 (also: no) | bf16 | fp16",
        choices=("auto", "fp32", "no", "bf16", "fp16")))
    device: str = field(default="auto", metadata=_h("auto | cpu | cuda", choices=("auto", "cpu", "cuda")))
    threads: Optional[int] = field(default=None, metadata=_h("torch CPU threads (default: torch's choice)", check=">= 1"))
    eval_every: int = field(default=0, metadata=_h("layer-wise evaluation every N steps (0 = only at the end)", check=">= 0"))
    eval_every_limit: Optional[int] = field(default=None, metadata=_h(
        "the periodic evaluations read at most N evaluation samples (none = all); the final one reads all",
        check=">= 1"))
    eval_batch_size: int = field(default=256, metadata=_h("batch size of the evaluation", check=">= 1"))
    log_every: int = field(default=10, metadata=_h("write a metrics.jsonl line every N steps", check=">= 1"))
    checkpoint_every: int = field(default=200, metadata=_h("save a resume checkpoint every N steps (0 = only at the end)", check=">= 0"))
    keep_checkpoints: int = field(default=2, metadata=_h(
        "good resume checkpoints to keep: a resume falls back to the previous one when the newest is damaged",
        check=">= 1"))
    on_nonfinite: str = field(default="stop", metadata=_h(
        "a step whose loss or gradient is NaN / inf: stop (exit naming the step; the last good checkpoint "
        "stays) | skip (drop that update and go on, as large-scale trainers do)", choices=("stop", "skip")))
    resume: bool = field(default=True, metadata=_h("continue from RUN_DIR/checkpoints when present (false: start over)"))
    lm_checkpoint: bool = field(default=True, metadata=_h(
        "causal LMs: apply the head layer by layer under activation checkpointing (bounded memory)"))
    progress: bool = field(default=True, metadata=_h("show a progress bar"))
    tensorboard: bool = field(default=False, metadata=_h("also log to RUN_DIR/tensorboard (needs the 'tracking' extra)"))


@dataclass
class TrainConfig:
    """``layertrace train`` config: model, data and train sections."""

    model: ModelSection = field(default_factory=ModelSection)
    data: DataSection = field(default_factory=DataSection)
    train: TrainSection = field(default_factory=TrainSection)


# Keys that change how a run is shown or saved, not the numbers it computes: a finished or
# interrupted run with other values of these is still the same run.
COSMETIC_KEYS = {
    "train.progress", "train.log_every", "train.tensorboard", "train.keep_checkpoints", "train.checkpoint_every",
    "train.resume", "train.threads", "train.eval_every", "train.eval_every_limit", "train.eval_batch_size",
}
