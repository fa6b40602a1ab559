"""Tiny causal LMs built from config in code (nothing downloaded), shared by the LM tests."""

from __future__ import annotations

import torch


def tiny_gpt2(n_layers: int = 3, d: int = 32, vocab: int = 101, seed: int = 0, init_std: float = 0.02):
    """A 3-block, width-32 GPT-2 (vocab 101), eval mode, seeded. ``init_std`` 0.2 gives peaked readouts."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(seed)
    cfg = GPT2Config(n_layer=n_layers, n_embd=d, n_head=4, vocab_size=vocab, n_positions=64,
                     bos_token_id=1, eos_token_id=0, pad_token_id=0, initializer_range=init_std)
    model = GPT2LMHeadModel(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) < 100_000
    return model


def tiny_llama(n_layers: int = 3, d: int = 32, vocab: int = 103, seed: int = 0, cls_name: str = "Llama"):
    """A 3-block, width-32 Llama-layout LM (GQA: 4 query heads, 2 kv heads), eval mode, seeded."""
    import transformers

    torch.manual_seed(seed)
    config_cls = getattr(transformers, f"{cls_name}Config")
    model_cls = getattr(transformers, f"{cls_name}ForCausalLM")
    cfg = config_cls(num_hidden_layers=n_layers, hidden_size=d, intermediate_size=2 * d, num_attention_heads=4,
                     num_key_value_heads=2, vocab_size=vocab, max_position_embeddings=64,
                     bos_token_id=1, eos_token_id=0, pad_token_id=0, tie_word_embeddings=False)
    model = model_cls(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) < 100_000
    return model


def padded_batch(vocab: int, side: str = "right", seed: int = 1):
    """4 sequences of 9 tokens; rows 1 and 3 padded on ``side`` (3 and 5 pads); pads are token 0."""
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, vocab, (4, 9), generator=g)
    mask = torch.ones(4, 9, dtype=torch.long)
    for row, n_pad in ((1, 3), (3, 5)):
        if side == "right":
            mask[row, 9 - n_pad:] = 0
        else:
            mask[row, :n_pad] = 0
    ids[mask == 0] = 0
    return {"input_ids": ids, "attention_mask": mask}
