"""The one corpus -> token-block builder: documents encoded one by one and joined by eos, which is
the token stream of the whole corpus joined by the eos token and encoded at once (what causal-LM
training did before the builders were merged: the LM track's numbers depend on it)."""

from __future__ import annotations

import numpy as np

from layertrace.data import chunk_tokens, token_blocks
from layertrace.data.tokenizer import train_bpe_tokenizer

DOCS = [f"Document {i}: the film was {'good' if i % 2 else 'bad'}, and the plot {'twisted' * (i % 3)} on." * (1 + i % 4)
        for i in range(40)]


def test_token_blocks_equal_the_eos_joined_stream():
    tok = train_bpe_tokenizer(DOCS, vocab_size=300)
    blocks = token_blocks(tok, DOCS, 16)
    reference = chunk_tokens(tok(tok.eos_token.join(DOCS) + tok.eos_token)["input_ids"], 16)
    np.testing.assert_array_equal(blocks, reference)
    assert (blocks == tok.eos_token_id).sum() >= len(DOCS) - 2  # one separator per document (the tail is cut)


def test_max_blocks_reads_only_what_it_needs():
    tok = train_bpe_tokenizer(DOCS, vocab_size=300)
    full = token_blocks(tok, DOCS, 16)
    few = token_blocks(tok, DOCS, 16, max_blocks=3)
    np.testing.assert_array_equal(few, full[:3])


def test_a_tokenizer_without_eos_separates_documents_by_a_blank_line():
    class Words:
        eos_token_id = None

        def __call__(self, text, add_special_tokens=True):
            return {"input_ids": [len(w) for w in text.replace("\n\n", " 00 ").split()]}

    blocks = token_blocks(Words(), ["a bb", "ccc"], 3)
    np.testing.assert_array_equal(blocks, [[1, 2, 2]])  # "a bb" + blank line (2), then "ccc 00" is cut
