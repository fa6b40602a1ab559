"""Models dispatched with Accelerate (``device_map``, CPU and disk offload) run block by block.

Each block's Accelerate hook moves the state to that block's device and loads its offloaded weights;
the adapter only sends the inputs to the embedding's device. Checked on CPU with part of a tiny model
offloaded to disk, against an undispatched copy of the same model.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch.testing import assert_close

from layertrace.lm.early_exit import early_exit_generate
from layertrace.lm.generate import SamplingConfig, generate
from layertrace.models import adapt, hf_auto
from layertrace.models.zoo import get

GREEDY = SamplingConfig(strategy="greedy")


def _dispatch(model, device_map, folder):
    from accelerate import dispatch_model

    return dispatch_model(model, device_map=device_map, offload_dir=str(folder))


def text_batch():
    ids = torch.randint(3, 99, (3, 6), generator=torch.Generator().manual_seed(0))
    mask = torch.tensor([[1] * 6, [0, 0, 1, 1, 1, 1], [0, 1, 1, 1, 1, 1]])
    return {"input_ids": ids.masked_fill(mask == 0, 0), "attention_mask": mask}


def test_causal_lm_with_a_block_on_disk_traces_and_decodes_like_the_model(tmp_path):
    model = get("llama").build()
    ref = copy.deepcopy(model)
    model = _dispatch(model, {"model.embed_tokens": "cpu", "model.rotary_emb": "cpu", "model.layers.0": "cpu",
                              "model.layers.1": "disk", "model.norm": "cpu", "lm_head": "cpu"}, tmp_path)
    assert model.model.layers[1].self_attn.q_proj.weight.is_meta  # really offloaded
    a = adapt(model)
    assert hf_auto.VERIFIED["LlamaForCausalLM"].startswith("verified")  # the self-check ran on the dispatched model
    batch = text_batch()
    with torch.no_grad():
        got, want = a.trace(batch), adapt(ref).trace(batch)
    assert_close(got.logits, want.logits)
    assert torch.equal(generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=4,
                                sampling=GREEDY).sequences,
                       generate(ref, batch["input_ids"], batch["attention_mask"], max_new_tokens=4,
                                sampling=GREEDY).sequences)
    early = early_exit_generate(model, batch["input_ids"], batch["attention_mask"], tau=1.1, max_new_tokens=4,
                                sampling=GREEDY)
    assert torch.equal(early.sequences, generate(ref, batch["input_ids"], batch["attention_mask"],
                                                 max_new_tokens=4, sampling=GREEDY).sequences)


def test_classifier_loaded_with_a_device_map_and_an_offload_folder(tmp_path):
    from transformers import AutoModelForSequenceClassification

    model = get("bert").build()
    model.save_pretrained(tmp_path / "bert")
    device_map = {"bert.embeddings": "cpu", "bert.encoder.layer.0": "disk", "bert.encoder.layer.1": "cpu",
                  "bert.pooler": "cpu", "dropout": "cpu", "classifier": "cpu"}
    big = AutoModelForSequenceClassification.from_pretrained(tmp_path / "bert", device_map=device_map,
                                                             offload_folder=str(tmp_path / "offload")).eval()
    assert big.bert.encoder.layer[0].attention.self.query.weight.is_meta
    a = adapt(big)
    batch = text_batch()
    with torch.no_grad():
        got, want = a.trace(batch), adapt(model).trace(batch)
        own = big(**batch).logits
    assert_close(got.logits, want.logits)
    assert_close(got.logits[-1], own)
    from layertrace.exits.executor import run_early_exit

    assert_close(run_early_exit(a, batch, "fixed", 1).logits, want.logits[1])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_blocks_split_over_gpu_cpu_and_disk(tmp_path):
    model = get("llama").build()
    ref = copy.deepcopy(model)
    model = _dispatch(model, {"model.embed_tokens": 0, "model.rotary_emb": 0, "model.layers.0": 0,
                              "model.layers.1": "disk", "model.norm": "cpu", "lm_head": 0}, tmp_path)
    a = adapt(model)
    assert a.device == torch.device("cuda:0")
    batch = text_batch()
    with torch.no_grad():
        assert_close(a.trace(batch).logits.cpu(), adapt(ref).trace(batch).logits, atol=1e-4, rtol=1e-4)
    assert torch.equal(generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=4,
                                sampling=GREEDY).sequences.cpu(),
                       generate(ref, batch["input_ids"], batch["attention_mask"], max_new_tokens=4,
                                sampling=GREEDY).sequences)
