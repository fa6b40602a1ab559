"""The zoo: every tiny config-built model adapt() serves, checked against the model itself.

Per model: readout(h_L) == the model's own output; every layer below L == output_hidden_states;
a padded sample == the sample alone; State.select + block by block == the full batch; classifiers:
a fixed exit at layer k == layer k's readout; causal LMs: greedy decoding from layer L == HF
generate (KV cache), generation from a shallower layer and early-exit decoding run. Families that
cannot be served are refused in one line.
"""

from __future__ import annotations

import functools
import warnings

import pytest
import torch
from torch.testing import assert_close

from layertrace.errors import LayertraceError
from layertrace.models import adapt
from layertrace.models.zoo import VOCAB, ZOO, get, zoo_names

SERVED = [z.name for z in ZOO if z.group != "refused"]
LMS = zoo_names("causal_lm")
CLASSIFIERS = zoo_names("encoder_classifier") + zoo_names("decoder_classifier") + zoo_names("vision_classifier")
ATOL = 2e-5


@functools.lru_cache(maxsize=None)
def built(name: str):
    """(model, adapter) of a zoo entry, built once per session (adapt runs the self-check)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get(name).build()
    return model, adapt(model)


def batch_for(name: str, model) -> dict:
    """3 samples; text rows 1 and 2 padded by 3 and 1 tokens (left for causal LMs, right otherwise)."""
    g = torch.Generator().manual_seed(1)
    z = get(name)
    if "pixel_values" in _signature(model):
        cfg = getattr(model.config, "vision_config", None) or model.config
        return {"pixel_values": torch.randn(3, cfg.num_channels, cfg.image_size, cfg.image_size, generator=g)}
    pad = model.config.pad_token_id if getattr(model.config, "pad_token_id", None) is not None else 0
    ids = torch.randint(3, VOCAB, (3, 7), generator=g)
    ids[ids == pad] = 4
    mask = torch.ones(3, 7, dtype=torch.long)
    left = z.group == "causal_lm"
    for row, n in ((1, 3), (2, 1)):
        if left:
            mask[row, :n] = 0
        else:
            mask[row, 7 - n:] = 0
    ids[mask == 0] = pad
    if z.name == "clip-text-proj":  # CLIP pools at the highest id (its legacy eos rule): put it last
        ids[mask.bool()] = ids[mask.bool()].clamp(max=VOCAB - 2)
        ids[torch.arange(3), mask.sum(1) - 1 if not left else 6] = VOCAB - 1
    return {"input_ids": ids, "attention_mask": mask}


def _signature(model) -> set[str]:
    import inspect

    return set(inspect.signature(model.forward).parameters)


def real_tokens(batch: dict):
    mask = batch.get("attention_mask")
    return None if mask is None else mask.bool()


def positions(mask):
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 0)


@pytest.mark.parametrize("name", SERVED)
def test_readout_and_layers_equal_the_model(name):
    model, a = built(name)
    batch = batch_for(name, model)
    lm = a.kind == "causal_lm"
    kwargs = dict(batch)
    if lm and "position_ids" in _signature(model):
        kwargs["position_ids"] = positions(batch["attention_mask"])
    with torch.no_grad():
        trace = a.trace(batch)
        out = model(**kwargs, output_hidden_states=True)
        ref = a.model_logits(batch)
        states = [a.embed(batch)]
        for layer in range(1, a.n_layers + 1):
            states.append(a.block(layer, states[-1]))
    real = real_tokens(batch)
    assert trace.features.shape[0] == a.n_layers + 1 == len(out.hidden_states)
    if lm:
        assert_close(ref, out.logits)
        assert_close(trace.logits[-1][real], out.logits[real], atol=ATOL, rtol=1e-4)
    else:
        if a.kind == "classifier":
            assert_close(ref, out.logits)
            assert trace.logits.shape == (a.n_layers + 1, 3, model.config.num_labels)
        assert_close(trace.logits[-1], ref, atol=ATOL, rtol=1e-4)
    for layer in range(a.n_layers):  # features == output_hidden_states below L (real tokens)
        mine, theirs = states[layer].hidden, out.hidden_states[layer]
        if real is not None:
            mine, theirs = mine[real], theirs[real]
        assert_close(mine, theirs, atol=ATOL, rtol=1e-4)
        with torch.no_grad():
            assert_close(trace.features[layer], a.pool(a.features(states[layer])))


@pytest.mark.parametrize("name", [n for n in SERVED if get(n).padding_invariant])
def test_padded_sample_equals_the_sample_alone(name):
    model, a = built(name)
    batch = batch_for(name, model)
    with torch.no_grad():
        full = a.trace(batch)
        if "pixel_values" in batch:
            alone = a.trace({"pixel_values": batch["pixel_values"][1:2]})
            assert_close(alone.logits[:, 0], full.logits[:, 1], atol=ATOL, rtol=1e-4)
            return
        keep = batch["attention_mask"][1].bool()
        alone = a.trace({"input_ids": batch["input_ids"][1:2, keep],
                         "attention_mask": torch.ones(1, int(keep.sum()), dtype=torch.long)})
    if a.kind == "causal_lm":
        assert_close(alone.logits[:, 0], full.logits[:, 1][:, keep], atol=ATOL, rtol=1e-4)
        assert_close(alone.features[:, 0], full.features[:, 1][:, keep], atol=ATOL, rtol=1e-4)
    else:
        assert_close(alone.logits[:, 0], full.logits[:, 1], atol=ATOL, rtol=1e-4)
        assert_close(alone.features[:, 0], full.features[:, 1], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("name", SERVED)
def test_selected_samples_block_by_block_equal_the_batch(name):
    model, a = built(name)
    batch = batch_for(name, model)
    index = torch.tensor([2, 0])
    with torch.no_grad():
        full = a.trace(batch)
        state = a.embed(batch).select(index)
        for layer in range(1, a.n_layers + 1):
            state = a.block(layer, state)
            got = a.readout(a.features(state))
            if a.kind == "causal_lm":
                real = batch["attention_mask"][index].bool()
                assert_close(got[real], full.logits[layer][index][real], atol=ATOL, rtol=1e-4)
            else:
                assert_close(got, full.logits[layer][index], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("name", CLASSIFIERS)
def test_fixed_exit_at_layer_k_equals_layer_k_readout(name):
    from layertrace.exits.executor import run_early_exit

    model, a = built(name)
    batch = batch_for(name, model)
    with torch.no_grad():
        trace = a.trace(batch)
    for k in range(1, a.n_layers + 1):
        result = run_early_exit(a, batch, "fixed", k)
        assert (result.exit_layers == k).all()
        assert_close(result.logits, trace.logits[k], atol=ATOL, rtol=1e-4)


@pytest.mark.parametrize("name", LMS)
def test_greedy_decoding_from_layer_L_equals_hf_generate(name):
    from layertrace.lm.early_exit import early_exit_generate
    from layertrace.lm.generate import SamplingConfig, generate

    model, a = built(name)
    batch = batch_for(name, model)
    greedy = SamplingConfig(strategy="greedy")
    ours = generate(model, batch["input_ids"], batch["attention_mask"], max_new_tokens=4, sampling=greedy)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        hf = model.generate(**batch, do_sample=False, max_new_tokens=4, min_new_tokens=4, pad_token_id=0,
                            eos_token_id=None)
    assert torch.equal(ours.sequences, hf)
    shallow = generate(model, batch["input_ids"], batch["attention_mask"], layer=1, max_new_tokens=3,
                       sampling=greedy)
    assert shallow.new_tokens.shape == (3, 3) and shallow.blocks_run == 3 * 3
    full_depth = early_exit_generate(model, batch["input_ids"], batch["attention_mask"], tau=1.1,
                                     max_new_tokens=4, sampling=greedy)
    assert torch.equal(full_depth.sequences, hf)
    early = early_exit_generate(model, batch["input_ids"], batch["attention_mask"], tau=0.0, max_new_tokens=3,
                                sampling=greedy)
    assert (early.exit_layers[early.new_mask.bool()] == 1).all()


@pytest.mark.parametrize("name", zoo_names("refused"))
def test_unservable_families_are_refused_in_one_line(name):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = get(name).build()
    with pytest.raises(LayertraceError) as exc:
        adapt(model)
    message = str(exc.value)
    assert type(model).__name__ in message and "\n" not in message and "cannot serve" in message


def test_zoo_is_large_and_covers_every_kind():
    groups = {z.group for z in ZOO}
    assert len(SERVED) >= 40
    assert groups == {"encoder_classifier", "decoder_classifier", "causal_lm", "vision_classifier", "encoder",
                      "refused"}


def test_self_check_catches_a_wrong_readout():
    from layertrace.models.hf_auto import HFAutoAdapter, self_check

    model = get("llama").build()
    a = HFAutoAdapter(model)
    a.head.softcap = 1.0  # a readout that is not the model's
    with pytest.raises(LayertraceError, match="LlamaForCausalLM failed the self-check: the readout"):
        self_check(a)


def test_self_check_catches_block_0_arguments_replayed_everywhere():
    """Replaying block 0's arguments for every block breaks sliding-window / global alternation."""
    from layertrace.models.hf_auto import HFAutoAdapter, self_check

    model = get("gemma2").build()
    a = HFAutoAdapter(model)
    embed = a.embed

    def block0_everywhere(batch):
        state = embed(batch)
        calls = state.shared["calls"]
        first = calls[0]
        state.shared["calls"] = [type(first)(c.module, first.args, first.kwargs) for c in calls]
        return state

    a.embed = block0_everywhere
    with pytest.raises(LayertraceError, match="failed the self-check"):
        self_check(a, batch={"input_ids": torch.randint(3, VOCAB, (2, 8)),
                             "attention_mask": torch.ones(2, 8, dtype=torch.long)})


def test_check_false_skips_the_self_check(monkeypatch):
    from layertrace.models import hf_auto

    def boom(*_a, **_k):
        raise AssertionError("self-check ran")

    monkeypatch.setattr(hf_auto, "self_check", boom)
    model = get("gpt2").build()
    a = adapt(model, check=False)
    assert a.n_layers == 2
    with pytest.raises(LayertraceError, match="self-check ran"):
        adapt(get("gpt2").build())


def test_generic_adapter_gets_the_same_self_check():
    from layertrace.models import GenericAdapter

    class Net(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.stem, self.fc = torch.nn.Linear(6, 8), torch.nn.Linear(8, 3)
            self.blocks = torch.nn.ModuleList(torch.nn.Linear(8, 8) for _ in range(2))

        def forward(self, x):
            h = self.stem(x)
            for b in self.blocks:
                h = h + torch.tanh(b(h))
            return self.fc(h)

    net = Net().eval()
    batch = {"x": torch.randn(3, 6)}
    right = [lambda h, b=b: h + torch.tanh(b(h)) for b in net.blocks]
    wrong = [lambda h, b=b: torch.tanh(b(h)) for b in net.blocks]  # the residual forgotten
    common = dict(embed=lambda batch: net.stem(batch["x"]), head=net.fc, model_logits=lambda batch: net(batch["x"]))
    GenericAdapter(net, blocks=right, check_batch=batch, **common)
    with pytest.raises(LayertraceError, match=r"GenericAdapter\(Net\) failed the self-check: the readout"):
        GenericAdapter(net, blocks=wrong, check_batch=batch, **common)


def test_env_models_lists_verified_and_refused_families(monkeypatch, capsys):
    from layertrace.cli.main import main
    from layertrace.models import zoo

    real = zoo.verify_zoo
    monkeypatch.setattr(zoo, "verify_zoo", lambda names=None: real(["gpt2", "bert-model", "swin"]))
    assert main(["env", "--models"]) == 0
    out = capsys.readouterr().out
    assert "2 verified, 1 refused, 0 failed" in out
    assert "GPT2LMHeadModel" in out and "cannot serve SwinForImageClassification" in out


@pytest.mark.parametrize("name", ["bert-model", "clip-vision-proj"])
def test_headless_encoders_get_similarity_of_every_layer_without_a_readout(name, tmp_path):
    import numpy as np

    import layertrace
    from layertrace.analysis.result import AnalysisResult
    from layertrace.metrics import cos_matrix

    model, a = built(name)
    g = torch.Generator().manual_seed(0)
    if name == "bert-model":
        batches = [{"input_ids": torch.randint(3, VOCAB, (6, 7), generator=g),
                    "attention_mask": torch.ones(6, 7, dtype=torch.long)} for _ in range(2)]
    else:
        batches = [{"pixel_values": torch.randn(6, 3, 16, 16, generator=g)} for _ in range(2)]
    result = layertrace.analyze(model, batches)
    assert result.kind == "encoder" and result.n_samples == 12 and np.isnan(result.accuracy).all()
    with torch.no_grad():  # an independent reference: the features of every layer, COS by the metrics module
        feats = torch.cat([a.trace(b, with_logits=False).features for b in batches], dim=1)
    np.testing.assert_allclose(result.cos_matrix, np.asarray(cos_matrix(feats.double())), atol=1e-6)
    again = AnalysisResult.from_json(result.save(tmp_path))  # analysis.json: NaN readout written as null
    np.testing.assert_allclose(again.cos_matrix, result.cos_matrix)


@pytest.mark.parametrize("name", ["gemma2", "mixtral", "deberta-v2", "modernbert", "llama-cls", "dinov2-registers",
                                  "clip-image-cls"])
def test_export_of_first_k_blocks_equals_layer_k_readout(name, tmp_path):
    import transformers

    from layertrace.models import export_first_k

    model, a = built(name)
    batch = batch_for(name, model)
    out = export_first_k(a, 1, tmp_path / "k1")
    small = getattr(transformers, type(model).__name__).from_pretrained(out).eval()
    with torch.no_grad():
        want = a.trace(batch, layers=[1]).logits[0]
        got = small(**batch).logits if a.kind != "causal_lm" else adapt(small).model_logits(batch)
    if a.kind == "causal_lm":
        real = batch["attention_mask"].bool()
        want, got = want[real], got[real]
    assert_close(got, want, atol=ATOL, rtol=1e-4)
