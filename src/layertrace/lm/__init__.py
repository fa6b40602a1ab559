"""Causal-LM extras: per-layer LM metrics, generation from layer k, text quality, early-exit decoding.

Public names (imported lazily by their modules; nothing here imports transformers):

* per-layer next-token accuracy / perplexity / saturation: the analysis pass (``layertrace.analyze``)
* :func:`layertrace.lm.generate.generate`, :class:`~layertrace.lm.generate.SamplingConfig`
* :func:`layertrace.lm.early_exit.early_exit_generate`, :func:`~layertrace.lm.early_exit.early_exit_sweep`
* :func:`layertrace.lm.speculative.self_speculative_generate` (lossless), :func:`~layertrace.lm.speculative.choose_draft`
* :func:`layertrace.lm.quality.diversity`, :func:`~layertrace.lm.quality.coherence`,
  :class:`~layertrace.lm.quality.MeanPoolEncoder`
* :func:`layertrace.lm.plots.lm_figures` (the LM demo track itself is :mod:`layertrace.demo.lm_track`)
"""

from .early_exit import early_exit_generate, early_exit_sweep
from .generate import GenerationResult, SamplingConfig, generate
from .quality import coherence, diversity
from .speculative import choose_draft, self_speculative_generate

__all__ = [
    "GenerationResult", "SamplingConfig", "choose_draft", "coherence", "diversity", "early_exit_generate",
    "early_exit_sweep", "generate", "self_speculative_generate",
]
