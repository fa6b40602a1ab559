"""The aligned loss from a plain Hugging Face Trainer (AlignedTrainer and the compute_loss helper)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from layertrace.models import adapt
from layertrace.training import aligned_loss, weights_for_layers


def _tiny_bert():
    from transformers import BertConfig, BertForSequenceClassification

    torch.manual_seed(0)
    model = BertForSequenceClassification(BertConfig(
        vocab_size=50, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
        max_position_embeddings=16, num_labels=2, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0))
    assert sum(p.numel() for p in model.parameters()) < 100_000
    return model


def _examples(n=16):
    g = torch.Generator().manual_seed(0)
    ids = torch.randint(5, 50, (n, 10), generator=g)
    ids[:, 0] = 2
    return [{"input_ids": ids[i], "attention_mask": torch.ones(10, dtype=torch.long),
             "labels": torch.tensor(int(ids[i, 1] % 2))} for i in range(n)]


def _batch(examples):
    return {k: torch.stack([e[k] for e in examples]) for k in examples[0]}


def _trainer(tmp_path, model, **kwargs):
    from transformers import TrainingArguments

    from layertrace.training import AlignedTrainer

    args = TrainingArguments(output_dir=str(tmp_path), max_steps=4, per_device_train_batch_size=8, learning_rate=1e-3,
                             report_to=[], save_strategy="no", use_cpu=True, logging_steps=1, disable_tqdm=True)
    return AlignedTrainer(model=model, args=args, train_dataset=_examples(), **kwargs)


def test_aligned_trainer_loss_is_the_aligned_loss(tmp_path):
    model = _tiny_bert().train()
    trainer = _trainer(tmp_path, model, layer_weights="linear")
    batch = _batch(_examples(8))
    loss = trainer.compute_loss(model, dict(batch))
    adapter = adapt(model)
    trace = adapter.trace(batch, layers="1:")
    expected = aligned_loss(trace.logits, batch["labels"], weights_for_layers("linear", 3, [1, 2, 3])).total
    torch.testing.assert_close(loss, expected)
    # evaluation mode: the model's own loss
    model.eval()
    plain = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(plain, F.cross_entropy(model(**batch).logits, batch["labels"]))


def test_aligned_trainer_passes_self_distillation(tmp_path):
    model = _tiny_bert().train()
    trainer = _trainer(tmp_path, model, distill=0.5)
    batch = _batch(_examples(8))
    torch.manual_seed(0)  # the dropout of both forwards below
    loss = trainer.compute_loss(model, dict(batch))
    torch.manual_seed(0)
    trace = adapt(model).trace(batch, layers="1:")
    w = weights_for_layers("linear", 3, [1, 2, 3])
    torch.testing.assert_close(loss, aligned_loss(trace.logits, batch["labels"], w, distill=0.5).total)
    assert not torch.allclose(loss, aligned_loss(trace.logits, batch["labels"], w).total)


def test_aligned_trainer_trains_and_alternates(tmp_path):
    model = _tiny_bert()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    trainer = _trainer(tmp_path, model, alternate=True)
    batch = _batch(_examples(8))
    model.train()
    trainer.state.global_step = 0  # step 1: plain last-layer CE
    odd = trainer.compute_loss(model, dict(batch))
    torch.testing.assert_close(odd, F.cross_entropy(model(**batch).logits, batch["labels"]))
    trainer.state.global_step = 1  # step 2: aligned
    even = trainer.compute_loss(model, dict(batch))
    assert not torch.allclose(odd, even)
    trainer.state.global_step = 0
    result = trainer.train()
    assert result.global_step == 4 and torch.isfinite(torch.tensor(result.training_loss))
    assert any(not torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_compute_loss_helper_returns_the_models_logits():
    from layertrace.training import aligned_compute_loss

    model = _tiny_bert().eval()
    batch = _batch(_examples(4))
    loss, logits = aligned_compute_loss(model, batch, layer_weights="last", return_logits=True)
    torch.testing.assert_close(logits, model(**batch).logits)
    torch.testing.assert_close(loss, F.cross_entropy(logits, batch["labels"]))
    with pytest.raises(Exception, match="unknown layer weights"):
        aligned_compute_loss(model, batch, layer_weights="cubic")
