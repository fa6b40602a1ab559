"""A tiny config-built CLIP (2 vision blocks, 3 text blocks, width 32, p 16) and a word-level tokenizer
over the Fashion-MNIST class-name captions; nothing downloaded."""

from __future__ import annotations

import torch

from layertrace.data.vision import FASHION_MNIST_CLASSES

SPECIAL = ["[PAD]", "<bos>", "[UNK]", "<eos>"]  # eos id 3 (not 2): CLIP then pools the real eos token


def tiny_tokenizer(texts=None):
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    texts = texts or [f"a photo of a {c.lower()}" for c in FASHION_MNIST_CLASSES]
    words = sorted({w for t in texts for w in pre_tokenizers.Whitespace().pre_tokenize_str(t) for w in [w[0]]})
    vocab = {w: i for i, w in enumerate(SPECIAL + words)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A <eos>", special_tokens=[("<bos>", 1), ("<eos>", 3)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="[PAD]", bos_token="<bos>", eos_token="<eos>",
                                   unk_token="[UNK]")


def tiny_clip(vocab_size: int, seed: int = 0, channels: int = 1):
    import transformers

    cfg = transformers.CLIPConfig(
        text_config=dict(vocab_size=vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=3,
                         num_attention_heads=4, max_position_embeddings=16, pad_token_id=0, bos_token_id=1,
                         eos_token_id=3),
        vision_config=dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                           image_size=28, patch_size=7, num_channels=channels),
        projection_dim=16)
    torch.manual_seed(seed)
    model = transformers.CLIPModel(cfg).eval()
    assert sum(p.numel() for p in model.parameters()) < 100_000  # tiny, built from config
    return model


def tiny_clip_folder(path, channels: int = 1):
    """Save the tiny CLIP and its tokenizer as a folder ``layertrace analyze-clip --model`` loads."""
    tok = tiny_tokenizer()
    model = tiny_clip(len(tok), channels=channels)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return model, tok
