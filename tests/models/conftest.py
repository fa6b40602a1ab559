"""Tiny HF models of every encoder family, built from config in code (nothing is downloaded).

The ``tiny`` fixture gives ``tiny.build(family, attn="sdpa") -> (model, batch)``; each model is
in eval mode, seeded, asserts its own size, and each batch is what the model itself takes. Text
batches pad two of their samples so that masks matter.
"""

from __future__ import annotations

import types

import pytest
import torch

VISION = ["vit", "deit", "deit_teacher"]
TEXT = ["bert", "roberta", "electra", "distilbert"]
FAMILIES = VISION + TEXT
ATTN = ["eager", "sdpa"]


def _vision_config(cls, attn):
    return cls(image_size=16, patch_size=4, num_channels=3, hidden_size=32, num_hidden_layers=3,
               num_attention_heads=4, intermediate_size=64, num_labels=5, attn_implementation=attn)


def build(family: str, attn: str = "sdpa", seed: int = 0):
    """A tiny model of ``family`` and a batch for it: (model in eval mode, batch dict)."""
    import transformers as tf

    torch.manual_seed(seed)
    if family == "vit":
        model = tf.ViTForImageClassification(_vision_config(tf.ViTConfig, attn))
    elif family == "deit":
        model = tf.DeiTForImageClassification(_vision_config(tf.DeiTConfig, attn))
    elif family == "deit_teacher":
        model = tf.DeiTForImageClassificationWithTeacher(_vision_config(tf.DeiTConfig, attn))
    elif family == "bert":
        model = tf.BertForSequenceClassification(tf.BertConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=64, num_labels=3, attn_implementation=attn))
    elif family == "roberta":
        model = tf.RobertaForSequenceClassification(tf.RobertaConfig(
            vocab_size=100, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, intermediate_size=64,
            max_position_embeddings=66, pad_token_id=1, num_labels=3, attn_implementation=attn))
    elif family == "electra":
        model = tf.ElectraForSequenceClassification(tf.ElectraConfig(
            vocab_size=100, embedding_size=16, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
            intermediate_size=64, max_position_embeddings=64, num_labels=3, attn_implementation=attn))
    elif family == "distilbert":
        model = tf.DistilBertForSequenceClassification(tf.DistilBertConfig(
            vocab_size=100, dim=32, n_layers=3, n_heads=4, hidden_dim=64, max_position_embeddings=64,
            num_labels=3, attn_implementation=attn))
    else:
        raise ValueError(family)
    model.eval()
    if family in VISION:  # DeiT initialises its tokens and positions to zero: make layer 0 informative
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "token" in name or "position_embeddings" in name:
                    p.normal_(0.0, 0.5)
    n_params = sum(p.numel() for p in model.parameters())
    assert n_params < 60_000, (family, n_params)
    return model, batch_for(family, seed)


def batch_for(family: str, seed: int = 1, batch_size: int = 6):
    g = torch.Generator().manual_seed(seed)
    if family in VISION:
        return {"pixel_values": torch.randn(batch_size, 3, 16, 16, generator=g),
                "labels": torch.randint(0, 5, (batch_size,), generator=g)}
    pad_id = 1 if family == "roberta" else 0
    ids = torch.randint(5, 100, (batch_size, 10), generator=g)
    ids[:, 0] = 2  # [CLS] / <s>
    mask = torch.ones(batch_size, 10, dtype=torch.long)
    mask[1, 6:] = 0
    mask[4, 3:] = 0
    ids[mask == 0] = pad_id
    return {"input_ids": ids, "attention_mask": mask, "labels": torch.randint(0, 3, (batch_size,), generator=g)}


@pytest.fixture
def tiny():
    return types.SimpleNamespace(build=build, batch_for=batch_for, VISION=VISION, TEXT=TEXT,
                                 FAMILIES=FAMILIES, ATTN=ATTN)
