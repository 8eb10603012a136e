"""Fitting the ID tokenizers: held-out split, k-means codebook init, training with early
stopping, dead-codeword re-seeding.

Determinism: all torch randomness (weight init, masking, shuffling, re-seeding noise) runs under
``torch.random.fork_rng`` seeded with ``config.seed`` (so the caller's global RNG state is left
untouched), the split uses ``numpy.random.default_rng(seed)`` and every faiss k-means gets an
explicit seed. On CPU the same seed gives bit-identical tokens.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np
import torch
from torch import Tensor

from tokenrec_pipeline.training.loop import EarlyStopping, fit_epochs

from .config import TokenizerConfig, TokenizerConfigError
from .diagnostics import collision_rate
from .modules import ResidualVQVAEModel, TokenizerModel, TokenizerOutput, build_model

if TYPE_CHECKING:
    from .fitted import FittedTokenizer

logger = logging.getLogger(__name__)

#: Rows per forward pass when a whole split is pushed through a model without gradients.
_EVAL_BATCH = 8192


@dataclass
class VQLosses:
    """The three terms of the slides' objective (each averaged over the batch) and their sum."""

    total: Tensor
    recon: Tensor
    codebook: Tensor
    commitment: Tensor


def vq_losses(x: Tensor, out: TokenizerOutput, beta: float) -> VQLosses:
    """``L = ||x - r||^2 + sum_k ||sg[a^k] - c^k||^2 + beta * sum_k ||a^k - sg[c^k]||^2``.

    Squared norms are summed over feature dimensions and codebooks and averaged over the batch,
    exactly as the equations are written (no per-element averaging, which would silently re-weight
    the terms by d / d_c).

    Args:
        x: target ``(B, d)``: the UNMASKED standardised input.
        out: the model's forward output (latents/codewords ``(B, K, D)``, recon ``(B, d)``).
        beta: commitment weight.
    """
    recon = (out.recon - x).pow(2).sum(dim=-1).mean()
    codebook = (out.latents.detach() - out.codewords).pow(2).sum(dim=(-1, -2)).mean()
    commitment = (out.latents - out.codewords.detach()).pow(2).sum(dim=(-1, -2)).mean()
    return VQLosses(recon + codebook + beta * commitment, recon, codebook, commitment)


def faiss_kmeans(points: np.ndarray, n_clusters: int, n_iter: int, seed: int) -> np.ndarray:
    """Centroids ``(n_clusters, D)`` float32 of ``points`` ``(N, D)`` by faiss k-means (L2).

    faiss re-splits empty clusters, so with ``N >= n_clusters`` distinct points all centroids are
    distinct. ``min_points_per_centroid=1`` silences faiss' "please provide more points" warning:
    a few thousand items for 256 codewords is the normal regime here.
    """
    points = np.ascontiguousarray(points, dtype=np.float32)
    kmeans = faiss.Kmeans(
        points.shape[1], n_clusters, niter=n_iter, seed=seed, min_points_per_centroid=1, verbose=False
    )
    kmeans.train(points)
    return np.asarray(kmeans.centroids, dtype=np.float32).reshape(n_clusters, points.shape[1])


@torch.no_grad()
def quantize_all(model: TokenizerModel, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``model.quantize`` over all of ``x`` ``(N, d)`` in eval mode (no mask), batched."""
    was_training = model.training
    model.eval()
    parts = [model.quantize(x[i : i + _EVAL_BATCH]) for i in range(0, x.shape[0], _EVAL_BATCH)]
    model.train(was_training)
    return tuple(torch.cat(p, dim=0) for p in zip(*parts, strict=True))  # type: ignore[return-value]


@torch.no_grad()
def kmeans_init_codebooks(model: TokenizerModel, x: Tensor, n_iter: int, seed: int) -> None:
    """Initialise every codebook by k-means on the vectors it will quantise.

    Codebook k is fitted after codebooks < k, on ``latents[:, k]`` recomputed with them, so for
    residual models codebook k sees the residuals of the already-initialised levels (for ``kmeans``
    this *is* the whole fit: K rounds of residual k-means). Each codebook gets its own faiss seed,
    so with a shared encoder the K codebooks start as different partitions.

    Args:
        model: the (untrained or trained) tokenizer model.
        x: standardised training embeddings ``(N, d)`` with ``N >= codebook_size``.
        n_iter: k-means iterations.
        seed: base seed; codebook k uses ``seed + k``.
    """
    for k, codebook in enumerate(model.codebooks):
        latents, _, _ = quantize_all(model, x)
        centroids = faiss_kmeans(latents[:, k].cpu().numpy(), codebook.size, n_iter, seed + k)
        codebook.weight.copy_(torch.from_numpy(centroids).to(codebook.weight.device))


@torch.no_grad()
def reseed_dead_codewords(
    model: TokenizerModel, x: Tensor, noise: float, quantized: tuple[Tensor, Tensor, Tensor] | None = None
) -> int:
    """Replace codewords that no training embedding maps to; return how many were replaced.

    For each codebook k (in order, recomputing latents so residual levels see the new codewords):
    the ``n_dead`` unused codewords are replaced by the latents of ``n_dead`` samples drawn at random
    (torch global RNG, seeded by the caller) from the ``2 * n_dead`` samples with the largest
    quantisation error ``||a^k - c^k||^2``, plus Gaussian noise of std ``noise`` times the latents'
    per-dimension std. The worst-served samples are where a new codeword lowers the error the most
    and splits the most crowded cells (which is also what lowers token collisions); the random
    draw and the noise keep two new codewords from landing on the same point.

    Usage is measured in eval mode (no masking), i.e. exactly as ``encode`` will assign tokens.
    ``quantized`` is ``quantize_all(model, x)`` of the current weights when the caller already has
    it. A pass over ``x`` is only repeated after a codebook was changed and only for residual
    models, whose later levels quantise what the earlier ones left: in MQ and the product VQ-VAE
    codebook k's codes do not depend on the other codebooks, so one pass serves all K (same
    result as recomputing, one pass instead of K).
    """
    nested = isinstance(model, ResidualVQVAEModel)
    current = quantized
    replaced = 0
    for k, codebook in enumerate(model.codebooks):
        if current is None:
            current = quantize_all(model, x)
        latents, codes, words = current
        counts = torch.bincount(codes[:, k], minlength=codebook.size)
        dead = (counts == 0).nonzero().squeeze(1)
        n_dead = int(dead.numel())
        if n_dead == 0:
            continue
        z = latents[:, k]
        error = (z - words[:, k]).pow(2).sum(dim=1)
        pool = error.topk(min(z.shape[0], 2 * n_dead)).indices
        chosen = pool[torch.randperm(pool.numel(), device=pool.device)[:n_dead]]
        jitter = torch.randn(n_dead, z.shape[1], device=z.device) * z.std(dim=0) * noise
        codebook.weight[dead] = z[chosen] + jitter
        replaced += n_dead
        if nested:
            current = None  # later levels quantise residuals of this codebook: recompute
    return replaced


@torch.no_grad()
def _recon_mse(model: TokenizerModel, x: Tensor) -> float:
    """Per-element reconstruction MSE through the codes, in the ORIGINAL embedding units."""
    was_training = model.training
    model.eval()
    total = 0.0
    for i in range(0, x.shape[0], _EVAL_BATCH):
        xb = x[i : i + _EVAL_BATCH]
        total += float((model(xb).recon - xb).pow(2).sum())
    model.train(was_training)
    scale = float(model.standardizer.scale)
    return total / x.numel() * scale**2


def _code_stats(model: TokenizerModel, codes: Tensor) -> tuple[list[float], float]:
    """Per-codebook utilisation (fraction of codewords used) and collision rate of ``codes`` ``(N, K)``."""
    utilisation = [
        float((torch.bincount(codes[:, k], minlength=cb.size) > 0).float().mean())
        for k, cb in enumerate(model.codebooks)
    ]
    return utilisation, collision_rate(codes)


def split_holdout(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded train/held-out row indices (both sorted) with ``round(n * fraction)`` held out."""
    perm = np.random.default_rng(seed).permutation(n)
    n_valid = int(round(n * fraction))
    return np.sort(perm[n_valid:]), np.sort(perm[:n_valid])


def _as_float_array(embeddings: Any, name: str = "embeddings") -> np.ndarray:
    """``embeddings`` as a finite float32 ``(N, d)`` array, with a clear error otherwise."""
    if isinstance(embeddings, torch.Tensor):
        embeddings = embeddings.detach().cpu().numpy()
    array = np.asarray(embeddings, dtype=np.float32)
    if array.ndim != 2 or array.shape[0] == 0 or array.shape[1] == 0:
        raise ValueError(f"{name} must be a non-empty 2-D array (n_ids, dim), got shape {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values; check the CF embedding stage output")
    return array


def fit_tokenizer(embeddings: np.ndarray | Tensor, config: TokenizerConfig | dict[str, Any]) -> FittedTokenizer:
    """Fit a tokenizer (MQ or a substitute) on CF embeddings.

    Steps: seeded held-out split (``valid_fraction``) -> standardiser fitted on the training rows
    -> k-means codebook init on encoder outputs -> Adam on ``vq_losses`` with per-epoch dead
    codeword re-seeding, early stopping on held-out reconstruction MSE (best weights kept).
    ``kmeans`` stops after the init (which is its whole fit).

    Args:
        embeddings: ``(N, d)`` user or item embeddings (training ids only).
        config: a :class:`TokenizerConfig` or a plain parameter dict.

    Returns:
        The fitted tokenizer (model on CPU, eval mode) with per-epoch ``history``.

    Raises:
        TokenizerConfigError: bad parameter, or too few training rows for ``codebook_size``.
        ValueError: malformed embeddings.
    """
    from .fitted import FittedTokenizer  # local: fitted imports this module's helpers

    if not isinstance(config, TokenizerConfig):
        config = TokenizerConfig.from_dict(config)
    data = _as_float_array(embeddings)
    device = config.resolve_device()
    start = time.perf_counter()

    train_idx, valid_idx = split_holdout(data.shape[0], config.valid_fraction, config.seed)
    if train_idx.size < config.codebook_size:
        raise TokenizerConfigError(
            f"{config.param_prefix}.codebook_size",
            f"k-means init needs at least codebook_size={config.codebook_size} training embeddings, "
            f"got {train_idx.size} ({data.shape[0]} minus the held-out valid_fraction="
            f"{config.valid_fraction}); lower codebook_size or valid_fraction",
        )

    fork_devices = [device.index or 0] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=fork_devices):
        torch.manual_seed(config.seed)
        model = build_model(config, data.shape[1]).to(device)
        x_all = torch.from_numpy(data).to(device)
        if config.standardize:
            model.standardizer.fit(x_all[torch.from_numpy(train_idx).to(device)])
        x_std = model.standardizer(x_all)
        x_train = x_std[torch.from_numpy(train_idx).to(device)]
        x_valid = x_std[torch.from_numpy(valid_idx).to(device)] if valid_idx.size else x_train

        kmeans_init_codebooks(model, x_train, config.kmeans_iters, config.seed)
        init_metrics, _ = _evaluate(model, x_train, x_valid)
        history = [{"epoch": 0, **init_metrics}]
        best_epoch = 0
        if model.trainable and config.epochs > 0:
            best_epoch = _train(model, x_train, x_valid, config, history)

    model = model.cpu().eval()
    fit_seconds = time.perf_counter() - start
    fitted = FittedTokenizer(
        config=config,
        model=model,
        history=history,
        fit_seconds=fit_seconds,
        best_epoch=best_epoch,
        n_train=int(train_idx.size),
        n_valid=int(valid_idx.size),
    )
    logger.info(
        "Fitted %s tokenizer (K=%d, L=%d) on %d embeddings (+%d held out) in %.1f s; best epoch %d, "
        "held-out recon MSE %.4g",
        config.quantizer, config.n_codebooks, config.codebook_size, train_idx.size, valid_idx.size,
        fit_seconds, best_epoch, history[-1]["valid_recon_mse"] if history else float("nan"),
    )  # fmt: skip
    return fitted


def _evaluate(
    model: TokenizerModel, x_train: Tensor, x_valid: Tensor
) -> tuple[dict[str, float], tuple[Tensor, Tensor, Tensor]]:
    """History metrics of the current weights: held-out recon MSE (original units), and the
    smallest codebook utilisation and the collision rate of the training ids' codes; plus the
    training ids' ``quantize_all`` output the statistics were computed from (re-seeding reuses it)."""
    quantized = quantize_all(model, x_train)
    utilisation, collisions = _code_stats(model, quantized[1])
    metrics = {
        "valid_recon_mse": _recon_mse(model, x_valid),
        "utilisation_min": min(utilisation),
        "train_collision_rate": collisions,
    }
    return metrics, quantized


def _train(
    model: TokenizerModel, x_train: Tensor, x_valid: Tensor, config: TokenizerConfig, history: list[dict[str, float]]
) -> int:
    """Adam + early stopping on held-out recon MSE; returns the best epoch, whose weights it
    loads back into ``model``, and appends one row per epoch to ``history`` (whose last row is
    the k-means init, epoch 0, a candidate too).

    Order per epoch: train -> evaluate (history row) -> snapshot if best -> re-seed dead codewords
    for the next epoch. The snapshot is taken *before* re-seeding so the kept weights are exactly
    the ones that were evaluated.
    """
    codebook_params = list(model.codebooks.parameters())
    codebook_ids = {id(p) for p in codebook_params}
    other_params = [p for p in model.parameters() if id(p) not in codebook_ids]
    optimizer = torch.optim.Adam(
        [
            {"params": other_params, "weight_decay": config.weight_decay},
            # No weight decay on codewords: it would pull every codeword towards the origin.
            {"params": codebook_params, "weight_decay": 0.0},
        ],
        lr=config.lr,
    )
    schedule = (
        torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=config.epochs)
        if config.lr_schedule == "cosine"
        else None
    )
    n = x_train.shape[0]
    best_state = copy.deepcopy(model.state_dict())  # the k-means init (epoch 0) is a candidate too
    stopping = EarlyStopping("valid_recon_mse", "min", config.patience)
    stopping.update(0, history[-1]["valid_recon_mse"])
    last: dict[str, Any] = {}

    def train_epoch(epoch: int) -> dict[str, float]:
        model.train()
        step_losses: list[Tensor] = []  # (4,) per step, batch-size weighted; read once per epoch (no sync per step)
        perm = torch.randperm(n, device=x_train.device)
        for i in range(0, n, config.batch_size):
            xb = x_train[perm[i : i + config.batch_size]]
            losses = vq_losses(xb, model(xb), config.beta)
            optimizer.zero_grad(set_to_none=True)
            losses.total.backward()
            optimizer.step()
            terms = torch.stack([losses.total, losses.recon, losses.codebook, losses.commitment]).detach()
            step_losses.append(terms * (xb.shape[0] / n))
        epoch_terms = torch.stack(step_losses).double().sum(dim=0).tolist()
        record = dict(zip(("loss", "recon", "codebook", "commitment"), epoch_terms, strict=True))
        record["lr"] = optimizer.param_groups[0]["lr"]
        if schedule is not None:
            schedule.step()
        return record

    def validate(epoch: int) -> dict[str, float]:
        metrics, last["quantized"] = _evaluate(model, x_train, x_valid)
        return metrics

    def keep_best(epoch: int) -> None:
        best_state.update(copy.deepcopy(model.state_dict()))

    def reseed(record: dict[str, float]) -> None:
        # After the best-epoch snapshot, so the kept weights are exactly the ones that were evaluated.
        record["reseeded"] = 0.0
        if config.reseed_dead_codes and not stopping.should_stop and record["epoch"] < config.epochs:
            record["reseeded"] = float(reseed_dead_codewords(model, x_train, config.reseed_noise, last["quantized"]))

    result = fit_epochs(f"{config.quantizer} tokenizer", config.epochs, train_epoch, validate, stopping,
                        keep_best=keep_best, on_epoch_end=reseed, log=logger)
    history.extend(result.history)
    best_epoch = result.best_epoch
    model.load_state_dict(best_state)
    return best_epoch
