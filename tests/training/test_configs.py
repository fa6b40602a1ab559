"""Every training config in configs/ loads, and begins with the command that runs it."""

from __future__ import annotations

from pathlib import Path

import pytest

from layertrace.config import load_config
from layertrace.layers import resolve_layers
from layertrace.training.config import TrainConfig
from layertrace.training.objective import MODES

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = sorted((ROOT / "configs").glob("train*.yaml")) + sorted((ROOT / "configs" / "demo").glob("*.yaml"))


def test_there_are_configs():
    names = {p.name for p in CONFIGS}
    assert {"vit-fmnist.yaml", "minilm-rt.yaml", "train-deit-s-cifar10.yaml", "train-bert-sst2.yaml",
            "train-gpt2-wikitext103.yaml"} <= names


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.name)
def test_config_loads_and_names_its_command(path):
    cfg = load_config(TrainConfig, path)
    assert cfg.train.mode in MODES
    resolve_layers(12, cfg.train.layers)
    first = path.read_text().splitlines()[0]
    assert first.startswith("# layertrace train --config ") and str(path.relative_to(ROOT)) in first, first
