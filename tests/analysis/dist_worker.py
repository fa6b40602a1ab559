"""Run by tests/analysis/test_distributed.py under ``torchrun --nproc_per_node 2`` (gloo, CPU).

Analyses fixed toy / tiny-GPT-2 data in every configuration listed in ``cases()`` and, on rank 0,
pickles the results into ``sys.argv[1]``. The test compares them with one-process runs.
"""

from __future__ import annotations

import pickle
import sys
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))

from helpers import toy_batches  # noqa: E402

from layertrace.analysis import analyze  # noqa: E402
from layertrace.analysis.dist import DistContext, init_from_env, shutdown  # noqa: E402
from layertrace.models import ToyAdapter, ToyTransformerClassifier  # noqa: E402


def toy_adapter():
    torch.manual_seed(0)
    return ToyAdapter(ToyTransformerClassifier().eval())


def gpt2_adapter():
    from transformers import GPT2Config, GPT2LMHeadModel

    from layertrace.models import adapt

    torch.manual_seed(0)
    return adapt(GPT2LMHeadModel(GPT2Config(n_layer=2, n_embd=32, n_head=2, vocab_size=50, n_positions=16)).eval())


def lm_batches():
    g = torch.Generator().manual_seed(3)
    out = []
    for i in range(3):
        ids = torch.randint(0, 50, (3, 10), generator=g)
        mask = torch.ones_like(ids)
        mask[i % 3, 6:] = 0
        out.append({"input_ids": ids, "attention_mask": mask})
    return out


def cases():
    """name -> (adapter factory, batches factory, options). Five toy batches: rank 0 gets 3, rank 1 gets 2."""
    return {
        "toy-mean-ram": (toy_adapter, lambda: toy_batches(n_batches=5), {"rbf_cka": True, "collapse": True}),
        "toy-none-minibatch": (toy_adapter, lambda: toy_batches(n_batches=5), {"center": "none", "cka": "minibatch"}),
        "toy-disk-layers": (toy_adapter, lambda: toy_batches(n_batches=5), {"cache": "disk", "layers": "1::2"}),
        "gpt2-tokens": (gpt2_adapter, lm_batches, {"tokens_per_sample": 4}),
        # each process passes only its own share (batches rank::2), as a training loop's evaluation would
        "toy-presharded": (toy_adapter, lambda: toy_batches(n_batches=5), {"shard": "presharded", "cka": "minibatch"}),
    }


def main() -> None:
    warnings.simplefilter("ignore")
    torch.set_num_threads(1)
    created = init_from_env("cpu")
    assert created and DistContext.current().world_size == 2
    results = {}
    ctx = DistContext.current()
    for name, (make_adapter, make_batches, options) in cases().items():
        batches = make_batches()
        if options.get("shard") == "presharded":
            batches = batches[ctx.rank::ctx.world_size]
        results[name] = analyze(make_adapter(), batches, **options)
    if DistContext.current().is_main:
        Path(sys.argv[1]).write_bytes(pickle.dumps(results))
    shutdown()


if __name__ == "__main__":
    main()
