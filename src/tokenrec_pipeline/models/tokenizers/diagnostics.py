"""Quality measures of a tokenisation: collisions, codebook usage, reconstruction error.

All functions take codes ``(N, K)`` with values in ``[0, L)``. :func:`tokenizer_diagnostics`
returns a flat ``str -> float`` dict that can be logged to MLflow as metrics as-is.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import numpy as np
import torch

if TYPE_CHECKING:
    from .fitted import FittedTokenizer


def _as_codes(codes: np.ndarray | torch.Tensor) -> np.ndarray:
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if codes.ndim != 2 or not np.issubdtype(codes.dtype, np.integer):
        raise ValueError(f"codes must be an integer array of shape (n_ids, K), got {codes.dtype} {codes.shape}")
    return codes


def tuple_counts(codes: np.ndarray | torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    """For every id, how many ids (itself included) share its K-tuple: ``(N,)``; plus the count of
    each distinct tuple ``(n_distinct,)``."""
    codes = _as_codes(codes)
    _, inverse, counts = np.unique(codes, axis=0, return_inverse=True, return_counts=True)
    return counts[inverse.reshape(-1)], counts


def collision_rate(codes: np.ndarray | torch.Tensor) -> float:
    """Share of ids whose K-tuple is shared with at least one other id (0 = every id unique)."""
    per_id, _ = tuple_counts(codes)
    return float((per_id > 1).mean()) if per_id.size else 0.0


def codebook_utilisation(codes: np.ndarray | torch.Tensor, codebook_size: int) -> np.ndarray:
    """Fraction of the L codewords used at least once, per codebook: ``(K,)``."""
    codes = _as_codes(codes)
    return np.array([np.unique(codes[:, k]).size / codebook_size for k in range(codes.shape[1])])


def codebook_perplexity(codes: np.ndarray | torch.Tensor, codebook_size: int) -> np.ndarray:
    """``exp(entropy)`` of each codebook's code distribution: ``(K,)``, from 1 (one code used) to L
    (all codes equally used)."""
    codes = _as_codes(codes)
    out = []
    for k in range(codes.shape[1]):
        p = np.bincount(codes[:, k], minlength=codebook_size) / codes.shape[0]
        p = p[p > 0]
        out.append(float(np.exp(-(p * np.log(p)).sum())))
    return np.array(out)


def tokenizer_diagnostics(
    codes: np.ndarray | torch.Tensor, embeddings: np.ndarray | torch.Tensor, fitted: FittedTokenizer
) -> dict[str, float]:
    """All quality measures of ``codes`` (normally ``fitted.encode(embeddings)``).

    Keys (K codebooks numbered from 1):

    - ``n_ids``, ``n_distinct_tuples``, ``collision_rate``, ``max_ids_per_tuple``;
    - ``codebook{k}_utilisation``, ``codebook{k}_perplexity``, and ``utilisation_min``,
      ``utilisation_mean``, ``perplexity_min`` across codebooks;
    - ``recon_mse``: per-element MSE between ``embeddings`` and ``fitted.decode(codes)`` (original
      units) and ``recon_mse_relative``: the same divided by the embeddings' mean per-coordinate
      variance (0 = perfect, 1 = no better than the mean vector);
    - ``fit_seconds``, ``best_epoch``.
    """
    codes = _as_codes(codes)
    emb = embeddings.detach().cpu().numpy() if isinstance(embeddings, torch.Tensor) else np.asarray(embeddings)
    emb = emb.astype(np.float32, copy=False)
    if emb.shape[0] != codes.shape[0]:
        raise ValueError(f"codes ({codes.shape[0]} rows) and embeddings ({emb.shape[0]} rows) must match")
    per_id, counts = tuple_counts(codes)
    util = codebook_utilisation(codes, fitted.codebook_size)
    perp = codebook_perplexity(codes, fitted.codebook_size)
    mse = float(np.mean((fitted.decode(codes) - emb) ** 2))
    variance = float(emb.var(axis=0).mean())
    out: dict[str, float] = {
        "n_ids": float(codes.shape[0]),
        "n_distinct_tuples": float(counts.size),
        "collision_rate": float((per_id > 1).mean()),
        "max_ids_per_tuple": float(counts.max()),
    }
    for k in range(codes.shape[1]):
        out[f"codebook{k + 1}_utilisation"] = float(util[k])
        out[f"codebook{k + 1}_perplexity"] = float(perp[k])
    out.update(
        utilisation_min=float(util.min()),
        utilisation_mean=float(util.mean()),
        perplexity_min=float(perp.min()),
        recon_mse=mse,
        recon_mse_relative=mse / variance if variance > 0 else float("nan"),
        fit_seconds=fitted.fit_seconds,
        best_epoch=float(fitted.best_epoch),
    )
    return out
