"""A byte-level BPE tokenizer trained offline on a text corpus (GPT-2's scheme, small vocabulary).

Byte-level BPE (the ``tokenizers`` library, as GPT-2) never meets an unknown character: any text
maps to bytes first. The trained tokenizer is wrapped as a ``transformers`` fast tokenizer and
saved with ``save_pretrained`` so that a model folder (``config.json`` + weights + tokenizer files)
loads with :func:`layertrace.models.load_model` and trains with ``layertrace train``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Iterable, Sequence

from ..errors import LayertraceError

EOS_TOKEN = "<|endoftext|>"


def train_bpe_tokenizer(texts: Sequence[str] | Iterable[str], vocab_size: int = 2048, min_frequency: int = 2,
                        out_dir: str | Path | None = None) -> Any:
    """Train a byte-level BPE tokenizer on ``texts``.

    Args:
        texts: training documents (e.g. ``load_text_corpus("embedded", "train")``).
        vocab_size: final vocabulary size, the 256 byte symbols and ``<|endoftext|>`` included.
        min_frequency: merges need at least this many occurrences.
        out_dir: when given, ``save_pretrained`` the tokenizer there.

    Returns:
        a ``transformers.PreTrainedTokenizerFast`` whose ``eos_token`` (also bos / pad) is
        ``<|endoftext|>`` (id 0), with GPT-2's byte-level pre-tokenizer and decoder.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if vocab_size < 300:
        raise LayertraceError(f"vocab_size={vocab_size} is too small for byte-level BPE (256 bytes + merges); use >= 300")
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, min_frequency=min_frequency, special_tokens=[EOS_TOKEN],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(iter(texts), trainer=trainer)
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, eos_token=EOS_TOKEN, bos_token=EOS_TOKEN,
                                   pad_token=EOS_TOKEN, unk_token=None, model_max_length=1 << 30)
    if out_dir is not None:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        fast.save_pretrained(str(out_dir))
    return fast
