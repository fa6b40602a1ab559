"""The demo's orchestration: the top of the dependency ranks (DESIGN.md section 1, rank 6).

Nothing below imports this package; it composes the stages (models, data, training, analysis,
exits, lm, report) into the paper's end-to-end comparisons.

* :mod:`layertrace.demo.suite`: ``layertrace demo`` (vision / MLP / text runs, analysis, early exit,
  report); :class:`~layertrace.demo.suite.Demo`, :func:`~layertrace.demo.suite.resolve_config`.
* :mod:`layertrace.demo.lm_track`: the causal-LM track, :func:`~layertrace.demo.lm_track.run_lm_track`;
  also ``python -m layertrace.demo.lm_track --out DIR``.
"""
