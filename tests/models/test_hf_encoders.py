"""Parity of the HF encoder adapters (ViT, DeiT, BERT, RoBERTa, ELECTRA, DistilBERT) with the models.

Every check compares the adapter with the unmodified HF model on a tiny model built from config:
the shared readout at the last layer equals the model's logits, traced features equal the model's
own ``output_hidden_states`` at the prediction token(s), a layer-by-layer run on a sliced state
equals the full forward on those samples, and padding does not change a sample's result.
Both attention implementations (eager, sdpa) are covered: their masks have different forms.
"""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from layertrace.errors import LayertraceError
from layertrace.models import adapt
from layertrace.models.base import Adapter

VISION = ["vit", "deit", "deit_teacher"]
TEXT = ["bert", "roberta", "electra", "distilbert"]
FAMILIES = VISION + TEXT
CASES = [(f, a) for f in FAMILIES for a in ("eager", "sdpa")]


def prediction_tokens(family: str, hidden: torch.Tensor) -> torch.Tensor:
    """Reference pooling written here: [CLS], or the mean of DeiT's [CLS] and distillation token."""
    return hidden[:, :2].mean(1) if family == "deit_teacher" else hidden[:, 0]


@pytest.mark.parametrize("family,attn", CASES)
def test_trace_matches_model(tiny, family, attn):
    model, batch = tiny.build(family, attn)
    adapter = adapt(model)
    assert isinstance(adapter, Adapter) and adapter.n_layers == 3 and adapter.kind == "classifier"
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        out = model(**inputs, output_hidden_states=True)
        trace = adapter.trace(batch)
    assert trace.layers == [0, 1, 2, 3]
    assert trace.features.shape == (4, 6, 32)
    assert trace.logits.shape == (4, 6, adapter.num_outputs)
    # readout(h_L) is the model's own logits
    assert_close(trace.logits[-1], out.logits)
    assert_close(adapter.model_logits(batch), out.logits)
    # features equal output_hidden_states at the prediction token(s), layer by layer
    assert len(out.hidden_states) == 4
    for layer, hidden in enumerate(out.hidden_states):
        assert_close(trace.features[layer], prediction_tokens(family, hidden))
    # forward(upto=L) is the same path
    with torch.no_grad():
        assert_close(adapter(batch), out.logits)


@pytest.mark.parametrize("family,attn", CASES)
def test_sliced_state_matches_full_forward(tiny, family, attn):
    model, batch = tiny.build(family, attn)
    adapter = adapt(model)
    keep = torch.tensor([4, 1, 5])  # includes both padded text samples, in a new order
    with torch.no_grad():
        full = model(**{k: v for k, v in batch.items() if k != "labels"}).logits
        state = adapter.embed(batch)
        state = adapter.block(1, state)
        state = state.select(keep)
        for layer in range(2, adapter.n_layers + 1):
            state = adapter.block(layer, state)
            if layer == 2:  # drop one more sample with a bool mask
                state = state.select(torch.tensor([True, False, True]))
        logits = adapter.readout(adapter.features(state))
    assert_close(logits, full[keep[[0, 2]]])


@pytest.mark.parametrize("family,attn", [(f, a) for f in TEXT for a in ("eager", "sdpa")])
def test_padding_does_not_change_results(tiny, family, attn):
    model, batch = tiny.build(family, attn)
    adapter = adapt(model)
    with torch.no_grad():
        batched = adapter.trace(batch)
        for i in (1, 4, 0):  # two padded samples and one full-length one
            n = int(batch["attention_mask"][i].sum())
            alone = {"input_ids": batch["input_ids"][i:i + 1, :n],
                     "attention_mask": batch["attention_mask"][i:i + 1, :n]}
            single = adapter.trace(alone)
            assert_close(single.features[:, 0], batched.features[:, i], atol=2e-5, rtol=1e-4)
            assert_close(single.logits[:, 0], batched.logits[:, i], atol=2e-5, rtol=1e-4)


@pytest.mark.parametrize("family", TEXT)
def test_text_without_attention_mask_matches_model(tiny, family):
    model, batch = tiny.build(family)
    adapter = adapt(model)
    ids = batch["input_ids"][[0, 2]]  # unpadded samples, no mask given
    with torch.no_grad():
        assert_close(adapter.trace({"input_ids": ids}).logits[-1], model(input_ids=ids).logits)


@pytest.mark.parametrize("family", VISION)
def test_vision_samples_are_independent(tiny, family):
    model, batch = tiny.build(family)
    adapter = adapt(model)
    with torch.no_grad():
        batched = adapter.trace(batch)
        single = adapter.trace({"pixel_values": batch["pixel_values"][3:4]})
    assert_close(single.logits[:, 0], batched.logits[:, 3])


@pytest.mark.parametrize("family", VISION)
def test_final_norm_switch(tiny, family):
    model, batch = tiny.build(family)
    with torch.no_grad():
        h = adapt(model).features(adapt(model).embed(batch))
        raw = adapt(model, final_norm=False).readout(h)
        if family == "deit_teacher":
            expected = (model.cls_classifier(h[:, 0]) + model.distillation_classifier(h[:, 1])) / 2
        else:
            expected = model.classifier(h)
        normed = adapt(model, final_norm=True).readout(h)
    assert_close(raw, expected)
    assert not torch.allclose(raw, normed)


@pytest.mark.parametrize("family", TEXT)
def test_final_norm_is_a_no_op_for_post_ln_text(tiny, family):
    model, batch = tiny.build(family)
    with torch.no_grad():
        a = adapt(model, final_norm=True).trace(batch).logits
        b = adapt(model, final_norm=False).trace(batch).logits
    assert_close(a, b, rtol=0, atol=0)


@pytest.mark.parametrize("family", ["vit", "deit_teacher", "bert", "distilbert"])
def test_adapter_adds_no_parameters_and_gradients_flow(tiny, family):
    model, batch = tiny.build(family)
    adapter = adapt(model)
    assert {id(p) for p in adapter.parameters()} == {id(p) for p in model.parameters()}
    adapter.train()
    trace = adapter.trace(batch)
    loss = torch.nn.functional.cross_entropy(trace.logits[1], batch["labels"])
    loss.backward()
    first_block = next(adapter.layers[0].parameters())
    assert first_block.grad is not None and first_block.grad.abs().sum() > 0
    # layer-1 loss reaches no later block
    assert all(p.grad is None or not p.grad.any() for p in adapter.layers[2].parameters())


def test_layer_selection_runs_only_needed_blocks(tiny):
    model, batch = tiny.build("bert")
    adapter = adapt(model)
    calls = []
    hooks = [blk.register_forward_hook(lambda *a, i=i: calls.append(i)) for i, blk in enumerate(adapter.layers)]
    try:
        with torch.no_grad():
            trace = adapter.trace(batch, layers=[0, 2])
    finally:
        for h in hooks:
            h.remove()
    assert trace.layers == [0, 2] and trace.features.shape[0] == 2
    assert calls == [0, 1]


def test_missing_inputs_raise_one_line_errors(tiny):
    vit, _ = tiny.build("vit")
    bert, _ = tiny.build("bert")
    with pytest.raises(LayertraceError, match="pixel_values"):
        adapt(vit).trace({"input_ids": torch.zeros(1, 3, dtype=torch.long)})
    with pytest.raises(LayertraceError, match="input_ids"):
        adapt(bert).trace({"pixel_values": torch.zeros(1, 3, 16, 16)})


def test_unknown_architecture_names_class_and_generic_adapter():
    class MyNet(torch.nn.Module):
        pass

    with pytest.raises(LayertraceError) as exc:
        adapt(MyNet())
    message = str(exc.value)
    assert "MyNet" in message and "GenericAdapter" in message and "\n" not in message


def test_registry_lists_the_encoder_families():
    from layertrace.models import registered_families

    names = registered_families()
    for cls in ("ViTForImageClassification", "DeiTForImageClassification", "DeiTForImageClassificationWithTeacher",
                "BertForSequenceClassification", "RobertaForSequenceClassification",
                "DistilBertForSequenceClassification", "ElectraForSequenceClassification"):
        assert cls in names


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("family", ["vit", "deit_teacher", "bert"])
def test_trace_on_cuda_bf16_matches_model(tiny, family):
    model, batch = tiny.build(family)
    model = model.to("cuda", torch.bfloat16)
    adapter = adapt(model)
    inputs = {k: v.cuda() for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        trace = adapter.trace(inputs)
        logits = model(**inputs).logits
    assert trace.logits.device.type == "cuda" and trace.logits.dtype == torch.bfloat16
    assert_close(trace.logits[-1], logits)
