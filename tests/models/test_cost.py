"""Parameter counts (the paper's Table 1) and measured FLOPs per layer."""

from __future__ import annotations

import copy

import pytest
import torch

from layertrace.cli.main import main
from layertrace.errors import LayertraceError
from layertrace.models import adapt, build_preset, compare_params, layer_flops, param_counts
from layertrace.models.cost import compare_params_config


def millions(n: int) -> str:
    return f"{n / 1e6:.2f}"


@pytest.mark.parametrize("preset,shared,per_layer", [
    ("deit-s", "22.05", "26.27"),   # paper's Table 1, DeiT-S (ImageNet, K = 1000)
    ("deit-b", "86.57", "95.02"),   # paper's Table 1, DeiT-B
])
def test_paper_table1_deit_rows(preset, shared, per_layer):
    counts = param_counts(build_preset(preset, device="meta"))
    assert (millions(counts["shared_head"]), millions(counts["per_layer_heads"])) == (shared, per_layer)


def test_deit_s_exact_counts_and_saving():
    model = build_preset("deit-s", device="meta")
    counts = param_counts(model)
    assert counts == {"shared_head": 22_050_664, "per_layer_heads": 22_050_664 + 11 * 1000 * 384}
    assert round(100 * compare_params(model).saving, 1) == 16.1  # paper: 16.1%


def test_gpt2_small_counts_and_gpt3_saving():
    counts = param_counts(build_preset("gpt2-small", device="meta"))
    # GPT-2 small as HF builds it (LM head tied to the token embedding, counted once)
    assert counts["shared_head"] == 124_439_808
    assert counts["per_layer_heads"] - counts["shared_head"] == 11 * 50257 * 768
    # GPT-3 (d = 12288, 96 layers, 175B): the paper's 25.1% saving follows from the same rule
    gpt3 = compare_params_config(96, 12288, 50257, base_params=175_000_000_000)
    assert round(100 * gpt3.saving, 1) == 25.1


def test_copied_heads_convention_counts_a_deep_copy_of_the_head(tiny):
    for family in ("vit", "deit_teacher", "bert", "distilbert"):
        model, _ = tiny.build(family)
        adapter = adapt(model)
        one_head = sum(p.numel() for p in copy.deepcopy(adapter.head).parameters())
        counts = param_counts(adapter, convention="copied_heads")
        assert counts["per_layer_heads"] - counts["shared_head"] == (adapter.n_layers - 1) * one_head
        paper = param_counts(adapter)
        k, d = adapter.num_outputs, adapter.hidden_size
        heads = 2 if family == "deit_teacher" else 1
        assert paper["per_layer_heads"] - paper["shared_head"] == (adapter.n_layers - 1) * heads * k * d
    with pytest.raises(LayertraceError, match="convention"):
        param_counts(adapter, convention="bogus")


def test_plain_config_row():
    row = compare_params_config(12, 384, 1000)
    assert row.extra == 11 * 384 * 1000 and row.shared_head is None and row.saving is None
    with pytest.raises(LayertraceError, match="layers"):
        compare_params_config(0, 384, 10)


def test_layer_flops_match_formula_and_full_forward(tiny):
    from layertrace.models.cost import flop_counter

    model, batch = tiny.build("vit")
    adapter = adapt(model)
    flops = layer_flops(adapter, batch)
    b, t, d, mlp, k = 6, 17, 32, 64, 5
    # one pre-LN block per sample: q, k, v, o and the MLP (2 flops per multiply-add) + attention (QK^T, AV)
    block = 2 * t * (4 * d * d + 2 * d * mlp) + 2 * 2 * t * t * d
    assert flops.blocks == [block] * 3
    assert flops.head == 2 * d * k
    assert flops.embed == 2 * (t - 1) * (3 * 4 * 4) * d  # patch projection, 16 patches
    with flop_counter() as counter, torch.no_grad():
        model(pixel_values=batch["pixel_values"])
    assert flops.full() * b == counter.get_total_flops()
    assert flops.upto(0) == flops.embed + flops.head
    # every sample exits at L and reads the head at each layer it passes
    assert flops.expected([3, 3]) == flops.upto(3, with_head=False) + 3 * flops.head
    assert flops.expected([1, 3], heads_per_layer=False) == (flops.upto(1) + flops.upto(3)) / 2
    with pytest.raises(LayertraceError):
        flops.upto(4)


def test_params_cli_prints_table1(capsys, tmp_path):
    assert main(["params", "--model", "deit-s", "--out", str(tmp_path)]) == 0
    out = capsys.readouterr().out
    assert "22.05M" in out and "26.27M" in out and "16.1%" in out
    assert (tmp_path / "params.json").is_file()
    assert main(["params", "--hidden-size", "768", "--num-classes", "1000", "--layers", "12",
                 "--base-params", "86567656"]) == 0
    assert "95.02M" in capsys.readouterr().out
    assert main(["params", "--model", "vit-demo", "--flops", "true"]) == 0
    assert "FLOPs vit-demo" in capsys.readouterr().out
    assert main(["params", "--model", "deit-z"]) == 2
    assert "did you mean" in capsys.readouterr().err
    assert main(["params", "--hidden-size", "768"]) == 2


def test_flops_do_not_depend_on_the_attention_kernel(tiny):
    eager = layer_flops(adapt(tiny.build("bert", "eager")[0]), tiny.batch_for("bert"))
    sdpa = layer_flops(adapt(tiny.build("bert", "sdpa")[0]), tiny.batch_for("bert"))
    assert eager.blocks == sdpa.blocks and eager.head == sdpa.head
    assert eager.blocks[0] > 2 * 10 * (4 * 32 * 32 + 2 * 32 * 64)  # attention products are counted
