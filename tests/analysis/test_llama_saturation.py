"""configs/paper/llama-saturation.yaml on a tiny config-built Llama saved to a local folder (offline)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from layertrace.cli.main import main

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "configs" / "paper" / "llama-saturation.yaml"
pytestmark = pytest.mark.filterwarnings("ignore::layertrace.metrics.DegenerateLayerWarning")


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
    """(model folder with tokenizer, corpus folder): a 3-block width-32 Llama, byte-level BPE of 300."""
    from transformers import LlamaConfig, LlamaForCausalLM

    from layertrace.data.tokenizer import train_bpe_tokenizer

    root = tmp_path_factory.mktemp("llama")
    corpus = root / "corpus"
    corpus.mkdir()
    words = ["model", "layer", "token", "the", "of", "reads", "shared", "head", "early", "exit", "residual"]
    rng = np.random.default_rng(0)
    docs = [" ".join(rng.choice(words, 30)) + "." for _ in range(300)]
    (corpus / "notes.txt").write_text("\n\n".join(docs))
    tok = train_bpe_tokenizer(docs, vocab_size=300)
    torch.manual_seed(0)
    eos = int(tok.eos_token_id)
    model = LlamaForCausalLM(LlamaConfig(
        num_hidden_layers=3, hidden_size=32, intermediate_size=64, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=len(tok), max_position_embeddings=64, bos_token_id=eos, eos_token_id=eos, pad_token_id=eos,
        tie_word_embeddings=False)).eval()
    assert sum(p.numel() for p in model.parameters()) < 100_000
    folder = root / "tiny-llama"
    model.save_pretrained(str(folder))
    tok.save_pretrained(str(folder))
    return folder, corpus


def test_config_names_its_command():
    assert CONFIG.read_text().splitlines()[0].startswith(
        "# layertrace analyze --config configs/paper/llama-saturation.yaml --model ")


def test_llama_saturation_config_runs_offline_and_the_report_shows_it(llama_folder, tmp_path):
    from transformers import AutoModelForCausalLM

    from layertrace.analysis.config import AnalyzeConfig
    from layertrace.analysis.run import _lm_batches
    from layertrace.config import load_config
    from layertrace.models import load_model

    folder, corpus = llama_folder
    out = tmp_path / "llama-saturation"
    args = ["analyze", "--config", str(CONFIG), "--model", str(folder), "--data", str(corpus), "--limit", "6",
            "--max_length", "16", "--device", "cpu", "--progress", "false", "--out", str(out)]
    assert main(args) == 0
    data = json.loads((out / "analysis.json").read_text())
    assert data["kind"] == "causal_lm" and data["layers"] == [0, 1, 2, 3]
    assert data["n_predictions"] == 6 * 15 and sum(data["saturation_hist"]) == data["n_predictions"]
    assert data["cos_to_last"][-1] == pytest.approx(1.0)
    # the last layer's readout is the model's own next-token prediction on the same blocks
    cfg = load_config(AnalyzeConfig, out / "analyze-config.yaml")
    blocks = list(_lm_batches(cfg, load_model(str(folder)), 16))
    model = AutoModelForCausalLM.from_pretrained(str(folder)).eval()
    with torch.no_grad():
        own = torch.cat([model(**b).logits[:, :-1].argmax(-1).reshape(-1) for b in blocks])  # row-major tokens
    samples = np.load(out / "analysis_samples.npz")
    np.testing.assert_array_equal(samples["pred"][:, -1], own.numpy())
    targets = torch.cat([b["input_ids"][:, 1:].reshape(-1) for b in blocks])
    assert data["accuracy"][-1] == pytest.approx(float((own == targets).double().mean()))

    from layertrace.report import build_report

    paths = build_report([out], tmp_path / "report.html")
    assert "Causal LM: saturation layers and COS to the last layer" in paths.html.read_text()
    md = paths.summary.read_text().split("## Causal LM saturation: llama-saturation\n", 1)[1]
    rows = [ln for ln in md.splitlines() if ln.startswith("| ") and not ln.startswith(("| layer", "| ---"))][:4]
    assert [int(r.split("|")[2]) for r in rows] == data["saturation_hist"]
    assert [r.split("|")[3].strip() for r in rows] == [f"{v:.3f}" for v in data["cos_to_last"]]
