"""``layertrace.config``: typed dataclass configs from YAML + dotted overrides, and the argparse they build."""

from __future__ import annotations

import argparse
from dataclasses import dataclass, field
from typing import Optional

import pytest

from layertrace.config import (add_config_args, config_from_args, config_to_dict, load_config, read_yaml,
                               save_config)
from layertrace.errors import LayertraceError


@dataclass
class Inner:
    lr: float = field(default=1e-3, metadata={"help": "peak learning rate"})
    steps: Optional[int] = field(default=None, metadata={"help": "optimizer steps"})
    modes: list = field(default_factory=lambda: ["standard"], metadata={"help": "modes"})


@dataclass
class Outer:
    name: str = field(default="run", metadata={"help": "run name"})
    with_lm: bool = field(default=False, metadata={"help": "also the LM"})
    inner: Inner = field(default_factory=Inner)
    overrides: dict = field(default_factory=dict, metadata={"help": "free-form dotted keys"})


def test_precedence_defaults_yaml_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: from-yaml\ninner:\n  lr: 0.01\n  steps: 5\noverrides:\n  train.lr: 3\n")
    cfg = load_config(Outer, path, {"inner.steps": "7", "with_lm": "yes"})
    assert cfg.name == "from-yaml"
    assert cfg.inner.lr == 0.01
    assert cfg.inner.steps == 7           # the override wins over the file, converted to int
    assert cfg.with_lm is True
    assert cfg.overrides == {"train.lr": 3}  # a dict-valued leaf is kept whole, not flattened
    assert load_config(Outer) == Outer()


def test_value_conversion_and_errors():
    cfg = load_config(Outer, None, {"inner.modes": "standard,aligned", "inner.steps": "none", "inner.lr": "3e-4"})
    assert cfg.inner.modes == ["standard", "aligned"] and cfg.inner.steps is None and cfg.inner.lr == 3e-4
    assert load_config(Outer, None, {"inner.modes": "[a, b]"}).inner.modes == ["a", "b"]
    with pytest.raises(LayertraceError, match="not a valid float"):
        load_config(Outer, None, {"inner.lr": "fast"})
    with pytest.raises(LayertraceError, match="not a boolean"):
        load_config(Outer, None, {"with_lm": "perhaps"})
    with pytest.raises(LayertraceError, match="did you mean 'inner.lr'"):
        load_config(Outer, None, {"inner.rl": "1"})


def test_yaml_errors_are_one_line(tmp_path):
    with pytest.raises(LayertraceError, match="not found"):
        read_yaml(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- a\n- b\n")
    with pytest.raises(LayertraceError, match="must hold a mapping"):
        read_yaml(tmp_path / "list.yaml")
    (tmp_path / "bad.yaml").write_text("a: [1,\n")
    with pytest.raises(LayertraceError, match="not valid YAML at line") as err:
        read_yaml(tmp_path / "bad.yaml")
    assert "\n" not in str(err.value)
    (tmp_path / "typo.yaml").write_text("inner:\n  lrr: 1\n")
    with pytest.raises(LayertraceError, match="unknown config key 'inner.lrr'.*did you mean 'inner.lr'"):
        load_config(Outer, tmp_path / "typo.yaml")


def test_argparse_options_from_the_dataclass(tmp_path, capsys):
    parser = argparse.ArgumentParser(prog="x")
    add_config_args(parser, Outer)
    with pytest.raises(SystemExit):
        parser.parse_args(["--help"])
    help_text = capsys.readouterr().out
    assert "--inner.lr FLOAT" in help_text and "peak learning rate (default: 0.001)" in help_text
    assert "--with-lm" in help_text and "--with_lm" in help_text  # both spellings
    path = tmp_path / "c.yaml"
    path.write_text("name: y\ninner:\n  lr: 0.5\n")
    args = parser.parse_args(["--config", str(path), "--inner.lr", "0.25", "--with-lm"])
    cfg = config_from_args(Outer, args)
    assert cfg.name == "y" and cfg.inner.lr == 0.25
    assert cfg.with_lm is True  # a bare boolean flag means true
    assert config_from_args(Outer, parser.parse_args(["--with-lm", "false"])).with_lm is False
    assert config_from_args(Outer, parser.parse_args([])) == Outer()  # untyped options stay defaults


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(Outer, None, {"name": "z", "inner.steps": "3", "overrides": "{a.b: 1}"})
    path = save_config(cfg, tmp_path)
    assert path == tmp_path / "config.yaml"
    assert load_config(Outer, path) == cfg
    assert config_to_dict(cfg)["inner"]["steps"] == 3


def test_demo_presets_match_their_yaml_files():
    """configs/demo-quick.yaml and configs/demo-paper.yaml spell out exactly the built-in presets."""
    from pathlib import Path

    from layertrace.demo.suite import PRESETS, DemoConfig, resolve_config

    root = Path(__file__).resolve().parents[2] / "configs"
    for name in PRESETS:
        path = root / f"demo-{name}.yaml"
        first = path.read_text().splitlines()[0]
        assert first.startswith("# layertrace demo"), first
        assert load_config(DemoConfig, path) == resolve_config(None, {"preset": name})
    assert resolve_config(None, {}) == DemoConfig()  # quick is the default
    paper = resolve_config(None, {"preset": "paper"})
    assert paper.vision.overrides["train.epochs"] > 10 and "multi-head" in paper.text.modes


def test_demo_config_precedence(tmp_path):
    from layertrace.demo.suite import resolve_config

    path = tmp_path / "d.yaml"
    path.write_text("preset: paper\nmlp:\n  width: 64\n")
    cfg = resolve_config(str(path), {"mlp.epochs": "2"})
    assert cfg.preset == "paper" and cfg.mlp.width == 64  # the file wins over the preset
    assert cfg.mlp.epochs == 2.0                           # the command line wins over the file
    assert cfg.vision.overrides["train.epochs"] == 100      # the rest comes from the paper preset
