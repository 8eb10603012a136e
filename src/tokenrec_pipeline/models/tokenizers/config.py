"""Configuration of the ID tokenizers, built from plain (Kedro) parameter dicts.

Every field is validated when the dataclass is built, and every error names the offending
parameter (``tokenizer.<field>``) so a user knows which line of ``parameters_tokenization.yml``
to fix.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch

from tokenrec_pipeline.core.params import resolve_device

#: The quantisers this module implements (paper Table VI).
QUANTIZERS: tuple[str, ...] = ("mq", "rqvae", "vqvae", "kmeans")
#: Learning-rate schedules of the tokenizer fit (``TokenizerConfig.lr_schedule``).
LR_SCHEDULES: tuple[str, ...] = ("constant", "cosine")


class TokenizerConfigError(ValueError):
    """A tokenizer parameter is missing, unknown or out of range.

    Attributes:
        parameter: the dotted name of the offending parameter, e.g. ``"tokenizer.codebook_size"``.
    """

    def __init__(self, parameter: str, message: str) -> None:
        super().__init__(f"{parameter}: {message}")
        self.parameter = parameter


@dataclass(frozen=True)
class TokenizerConfig:
    """Hyper-parameters of one tokenizer (user or item).

    Attributes:
        quantizer: ``"mq"`` (TokenRec's masked K-way tokenizer, default), ``"rqvae"`` (one encoder,
            K residual codebooks, decoder on the sum of the codewords), ``"vqvae"`` (one encoder whose
            ``K * code_dim`` latent is split into K sub-vectors, each quantised by its own codebook,
            i.e. product quantisation) or ``"kmeans"`` (no network: K rounds of residual k-means).
        n_codebooks: K, the number of tokens per id.
        codebook_size: L, the number of codewords per codebook (tokens per position).
        code_dim: d_c, the dimension of each codeword (ignored by ``kmeans``, whose codewords live in
            the input space).
        hidden_dims: hidden layer sizes of every encoder MLP; decoders use them reversed.
        mask_ratio: rho, probability that each input coordinate is zeroed during training
            (``mq`` only; 0 is the paper's "w/o Masking" ablation).
        beta: weight of the commitment term.
        shared_encoder: ``mq`` only: one encoder shared by the K branches instead of K separate
            encoders (the paper's "w/o K-way" ablation).
        standardize: centre the inputs and divide them by one global scalar (their RMS norm per
            coordinate) before encoding. A single scalar keeps the geometry of the embedding space
            (distances are only rescaled) while making lr/beta/noise carry across datasets whose
            embeddings have different scales; centring makes a masked (zeroed) coordinate equal
            to the mean, the natural "missing" value.
        lr: Adam learning rate (the peak one with ``lr_schedule="cosine"``).
        lr_schedule: ``"constant"``, or ``"cosine"``: the learning rate decays from ``lr`` to 0 over
            ``epochs`` epochs (one cosine half-period, stepped once per epoch), which reaches the
            constant rate's final loss in far fewer epochs when ``epochs`` is the budget.
        weight_decay: Adam weight decay.
        epochs: maximum number of training epochs.
        batch_size: mini-batch size.
        patience: early stopping: epochs without held-out improvement before stopping.
        valid_fraction: seeded fraction of the embeddings held out of training for early stopping
            (0 monitors the training reconstruction instead).
        reseed_dead_codes: after every epoch, replace codewords no training id maps to (see
            ``training.reseed_dead_codewords``).
        reseed_noise: std of the noise added to re-seeded codewords, relative to the per-dimension
            std of the latents.
        kmeans_iters: iterations of every faiss k-means (codebook init and the ``kmeans`` quantiser).
        seed: seed of every random step (split, init, masking, shuffling, k-means).
        device: ``"auto"`` (CUDA when present, else CPU) or any torch device string.
    """

    quantizer: str = "mq"
    n_codebooks: int = 3
    codebook_size: int = 256
    code_dim: int = 32
    hidden_dims: tuple[int, ...] = (256, 256)
    mask_ratio: float = 0.2
    beta: float = 0.25
    shared_encoder: bool = False
    standardize: bool = True
    lr: float = 1e-3
    lr_schedule: str = "constant"
    weight_decay: float = 0.0
    epochs: int = 200
    batch_size: int = 256
    patience: int = 20
    valid_fraction: float = 0.1
    reseed_dead_codes: bool = True
    reseed_noise: float = 0.01
    kmeans_iters: int = 25
    seed: int = 42
    device: str = "auto"
    #: Prefix used in error messages (where the parameters live); not part of the model.
    param_prefix: str = field(default="tokenizer", compare=False, repr=False)

    def __post_init__(self) -> None:
        # Normalise YAML lists to tuples so the frozen dataclass stays hashable and JSON round-trips.
        if isinstance(self.hidden_dims, list):
            object.__setattr__(self, "hidden_dims", tuple(self.hidden_dims))
        self._validate()

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_dict(
        cls, params: Mapping[str, Any] | None = None, *, param_prefix: str = "tokenizer"
    ) -> TokenizerConfig:
        """Build a config from a plain mapping (e.g. ``params:tokenizer`` in Kedro).

        Missing keys take the defaults; unknown keys are an error (a typo such as ``codebok_size``
        would otherwise be silently ignored).

        Args:
            params: the parameter mapping; ``None`` means all defaults.
            param_prefix: how the mapping is named in the user's config, used in error messages.

        Raises:
            TokenizerConfigError: naming the first unknown or invalid parameter.
        """
        params = dict(params or {})
        known = {f.name for f in dataclasses.fields(cls) if f.name != "param_prefix"}
        unknown = sorted(set(params) - known)
        if unknown:
            raise TokenizerConfigError(
                f"{param_prefix}.{unknown[0]}",
                f"unknown tokenizer parameter; valid ones are {sorted(known)}",
            )
        return cls(**params, param_prefix=param_prefix)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dict of the model-defining fields (inverse of :meth:`from_dict`)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        out.pop("param_prefix")
        out["hidden_dims"] = list(self.hidden_dims)
        return out

    def replace(self, **changes: Any) -> TokenizerConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)

    # ------------------------------------------------------------------ validation
    def _fail(self, name: str, message: str) -> None:
        raise TokenizerConfigError(f"{self.param_prefix}.{name}", message)

    def _check_int(self, name: str, minimum: int) -> None:
        value = getattr(self, name)
        # bool is an int subclass: `n_codebooks: true` in YAML must not pass as 1.
        if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
            self._fail(name, f"must be an integer >= {minimum}, got {value!r}")

    def _check_float(self, name: str, low: float, high: float, *, high_inclusive: bool) -> None:
        value = getattr(self, name)
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
        if ok:
            ok = low <= value <= high if high_inclusive else low <= value < high
        if not ok:
            bracket = "]" if high_inclusive else ")"
            self._fail(name, f"must be a number in [{low}, {high}{bracket}, got {value!r}")

    def _check_bool(self, name: str) -> None:
        value = getattr(self, name)
        if not isinstance(value, bool):
            self._fail(name, f"must be true or false, got {value!r}")

    def _validate(self) -> None:
        if self.quantizer not in QUANTIZERS:
            self._fail("quantizer", f"must be one of {list(QUANTIZERS)}, got {self.quantizer!r}")
        self._check_int("n_codebooks", 1)
        self._check_int("codebook_size", 2)
        self._check_int("code_dim", 1)
        if not isinstance(self.hidden_dims, tuple) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h >= 1 for h in self.hidden_dims
        ):
            self._fail("hidden_dims", f"must be a list of positive integers, got {self.hidden_dims!r}")
        self._check_float("mask_ratio", 0.0, 1.0, high_inclusive=False)
        self._check_float("beta", 0.0, math.inf, high_inclusive=False)
        self._check_bool("shared_encoder")
        self._check_bool("standardize")
        self._check_float("lr", 0.0, math.inf, high_inclusive=False)
        if self.lr <= 0:
            self._fail("lr", f"must be > 0, got {self.lr!r}")
        if self.lr_schedule not in LR_SCHEDULES:
            self._fail("lr_schedule", f"must be one of {list(LR_SCHEDULES)}, got {self.lr_schedule!r}")
        self._check_float("weight_decay", 0.0, math.inf, high_inclusive=False)
        self._check_int("epochs", 0)
        self._check_int("batch_size", 1)
        self._check_int("patience", 1)
        self._check_float("valid_fraction", 0.0, 1.0, high_inclusive=False)
        self._check_bool("reseed_dead_codes")
        self._check_float("reseed_noise", 0.0, math.inf, high_inclusive=False)
        self._check_int("kmeans_iters", 1)
        self._check_int("seed", 0)
        if not isinstance(self.device, str):
            self._fail("device", f"must be 'auto' or a torch device string, got {self.device!r}")
        if self.device != "auto":
            try:
                torch.device(self.device)
            except (RuntimeError, ValueError) as err:
                self._fail("device", f"must be 'auto' or a torch device string ({err})")

    # ------------------------------------------------------------------ derived
    def resolve_device(self) -> torch.device:
        """The torch device to train on: CUDA when present for ``"auto"``.

        Raises:
            TokenizerConfigError: a CUDA device was asked for but none is available.
        """
        try:
            return resolve_device(self.device, f"{self.param_prefix}.device")
        except ValueError as err:
            self._fail("device", str(err).split(": ", 1)[1])
