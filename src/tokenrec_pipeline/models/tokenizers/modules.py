"""Neural building blocks of the ID tokenizers (MQ-Tokenizer and its substitutes).

Shapes use B = batch, d = input (CF embedding) dim, K = number of codebooks, L = codebook size,
d_c = codeword dim.

Every tokenizer model maps a (standardised) embedding to K codes through the same three steps,
which is what lets one trainer, one k-means initialiser and one dead-code re-seeder serve all four
quantisers:

1. ``quantize(x) -> (latents, codes, codewords)``: ``latents[:, k]`` is the vector codebook k
   quantises (the k-th encoder output for MQ, the k-th residual for RQ, the k-th sub-vector for PQ),
   ``codes[:, k]`` its nearest codeword index and ``codewords[:, k]`` that codeword.
2. ``straight_through(latents, codewords)``: the decoder input, equal in value to the codewords'
   combination (mean / sum / concatenation) but with the gradient routed to the encoder(s).
3. ``decoder``: back to the input space.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor, nn

if TYPE_CHECKING:
    from .config import TokenizerConfig


class MLP(nn.Sequential):
    """Multi-layer perceptron ``(B, in_dim) -> (B, out_dim)``: Linear+ReLU per hidden layer,
    linear output (codewords and reconstructions are unbounded, so no final activation).

    PyTorch's default Linear init is kept on purpose: He init (unit-scale latents) was tried and
    gave 5-6 % item collisions on LastFM LightGCN embeddings against 1-3 % with the default init.
    """

    def __init__(self, in_dim: int, hidden_dims: Sequence[int], out_dim: int) -> None:
        layers: list[nn.Module] = []
        prev = in_dim
        for hidden in hidden_dims:
            layers += [nn.Linear(prev, hidden), nn.ReLU()]
            prev = hidden
        layers.append(nn.Linear(prev, out_dim))
        super().__init__(*layers)


class BernoulliMask(nn.Module):
    """Zero each input coordinate independently with probability ``ratio``, in training only.

    ``(B, d) -> (B, d)``. Unlike dropout there is no ``1/(1-ratio)`` rescaling: a masked coordinate
    is *missing* (set to the centred mean, 0), as in the paper's ``Mask(q, E), E ~ Bernoulli(rho)``.
    In eval mode, or with ``ratio == 0``, it is the identity, so ``encode`` is deterministic.
    """

    def __init__(self, ratio: float) -> None:
        super().__init__()
        self.ratio = float(ratio)

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.ratio == 0.0:
            return x
        keep = torch.rand_like(x) >= self.ratio
        return x * keep

    def extra_repr(self) -> str:
        return f"ratio={self.ratio}"


class Codebook(nn.Module):
    """L learnable codewords of dimension d_c with nearest-codeword (squared L2) lookup.

    ``weight``: ``(L, d_c)``. The codewords are trained by the codebook loss
    ``||sg[z] - c||^2`` (no EMA), as on the paper's slides.
    """

    def __init__(self, size: int, dim: int) -> None:
        super().__init__()
        # Placeholder init; real init is k-means on encoder outputs (training.kmeans_init_codebooks).
        self.weight = nn.Parameter(torch.randn(size, dim) / dim**0.5)

    @property
    def size(self) -> int:
        return self.weight.shape[0]

    def nearest(self, z: Tensor) -> Tensor:
        """Index of the nearest codeword: ``(B, d_c) -> (B,)`` long."""
        with torch.no_grad():
            w = self.weight
            # ||z||^2 is constant per row, so argmin needs only ||c||^2 - 2 z.c (one matmul).
            dist = w.pow(2).sum(dim=1) - 2.0 * z @ w.t()
            return dist.argmin(dim=1)

    def lookup(self, codes: Tensor) -> Tensor:
        """Codewords of the given indices: ``(B,) -> (B, d_c)`` (differentiable in the codebook)."""
        # F.embedding's backward is deterministic on CUDA, unlike advanced-indexing's scatter-add.
        return F.embedding(codes, self.weight)

    def forward(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """Quantise ``z`` ``(B, d_c)`` -> ``(codes (B,), codewords (B, d_c))``."""
        codes = self.nearest(z)
        return codes, self.lookup(codes)

    def extra_repr(self) -> str:
        return f"size={self.weight.shape[0]}, dim={self.weight.shape[1]}"


class Standardizer(nn.Module):
    """Centre by a mean vector and divide by one global scale: ``(B, d) -> (B, d)``.

    Buffers (saved with the weights): ``mean`` ``(d,)`` and ``scale`` ``()``. Fitted once on the
    training split by :meth:`fit`; identity (mean 0, scale 1) when standardisation is off.
    """

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))

    @torch.no_grad()
    def fit(self, x: Tensor) -> None:
        """Set ``mean`` and ``scale`` from ``x`` ``(N, d)``; scale = RMS per coordinate."""
        self.mean.copy_(x.mean(dim=0))
        rms = (x - self.mean).pow(2).mean().sqrt()
        self.scale.copy_(rms.clamp_min(1e-8))

    def forward(self, x: Tensor) -> Tensor:
        return (x - self.mean) / self.scale

    def inverse(self, x: Tensor) -> Tensor:
        """Back to the original units: ``(B, d) -> (B, d)``."""
        return x * self.scale + self.mean


@dataclass
class TokenizerOutput:
    """What a training forward pass returns.

    Attributes:
        latents: ``(B, K, D)``, the vector each codebook quantised (D = d_c, or d for k-means).
        codes: ``(B, K)`` long.
        codewords: ``(B, K, D)``, the selected codewords (differentiable in the codebooks).
        recon: ``(B, d)`` reconstruction, in standardised units.
    """

    latents: Tensor
    codes: Tensor
    codewords: Tensor
    recon: Tensor


class TokenizerModel(nn.Module):
    """Base class: K codebooks, an input standardiser, mask -> quantize -> decode.

    Subclasses define ``quantize``, ``combine`` and (if needed) ``straight_through``, and set
    ``self.decoder``. All public methods take and return *standardised* embeddings; callers
    apply ``self.standardizer`` (the trainer does it once for the whole data set).
    """

    #: Whether the model has trainable parameters besides the codebooks (k-means has none).
    trainable: bool = True

    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int, code_dim: int) -> None:
        super().__init__()
        self.input_dim = input_dim
        self.n_codebooks = n_codebooks
        self.standardizer = Standardizer(input_dim)
        self.mask: nn.Module = nn.Identity()
        self.codebooks = nn.ModuleList(Codebook(codebook_size, code_dim) for _ in range(n_codebooks))
        self.decoder: nn.Module = nn.Identity()

    # -- to be defined by subclasses -------------------------------------------------------------
    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(B, d)`` -> ``latents (B, K, D), codes (B, K), codewords (B, K, D)``."""
        raise NotImplementedError

    def combine(self, codewords: Tensor) -> Tensor:
        """Decoder input from the K codewords: ``(B, K, D) -> (B, D_dec)``."""
        raise NotImplementedError

    def straight_through(self, latents: Tensor, codewords: Tensor) -> Tensor:
        """Decoder input whose value is ``combine(codewords)`` and whose gradient reaches every
        latent unchanged (straight-through estimator): ``(B, K, D) x2 -> (B, D_dec)``."""
        return self.combine(latents + (codewords - latents).detach())

    # -- shared ----------------------------------------------------------------------------------
    def forward(self, x: Tensor) -> TokenizerOutput:
        """Training/evaluation pass on standardised ``x`` ``(B, d)``; masks only in train mode."""
        latents, codes, codewords = self.quantize(self.mask(x))
        recon = self.decoder(self.straight_through(latents, codewords))
        return TokenizerOutput(latents=latents, codes=codes, codewords=codewords, recon=recon)

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes of standardised ``x``: ``(B, d) -> (B, K)`` long. Call in eval mode."""
        return self.quantize(x)[1]

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Reconstruction (standardised units) from codes: ``(B, K) -> (B, d)``."""
        codewords = torch.stack([cb.lookup(codes[:, k]) for k, cb in enumerate(self.codebooks)], dim=1)
        return self.decoder(self.combine(codewords))

    def _quantize_each(self, latents: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Quantise ``latents[:, k]`` with codebook k, independently: ``(B, K, D)`` -> triple."""
        codes, words = zip(*(cb(latents[:, k]) for k, cb in enumerate(self.codebooks)), strict=True)
        return latents, torch.stack(codes, dim=1), torch.stack(words, dim=1)


class MQTokenizerModel(TokenizerModel):
    """TokenRec's MQ-Tokenizer: Bernoulli mask, K-way encoders, K codebooks, K-to-1 decoder.

    ``a^k = Enc^k(Mask(x))`` ``(B, d_c)``; ``w^k = argmin_l ||a^k - c^k_l||``; the decoder MLP
    reads the MEAN of the K selected codewords ``(B, d_c)`` and outputs ``(B, d)``.
    With ``shared_encoder`` (the "w/o K-way" ablation) one encoder's output is quantised by all
    K codebooks (their k-means inits differ by seed, so they start as different partitions).
    """

    def __init__(
        self,
        input_dim: int,
        n_codebooks: int,
        codebook_size: int,
        code_dim: int,
        hidden_dims: Sequence[int],
        mask_ratio: float,
        shared_encoder: bool,
    ) -> None:
        super().__init__(input_dim, n_codebooks, codebook_size, code_dim)
        self.mask = BernoulliMask(mask_ratio)
        self.shared_encoder = shared_encoder
        n_encoders = 1 if shared_encoder else n_codebooks
        self.encoders = nn.ModuleList(MLP(input_dim, hidden_dims, code_dim) for _ in range(n_encoders))
        self.decoder = MLP(code_dim, list(reversed(hidden_dims)), input_dim)

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        if self.shared_encoder:
            latents = self.encoders[0](x).unsqueeze(1).expand(-1, self.n_codebooks, -1)
        else:
            latents = torch.stack([enc(x) for enc in self.encoders], dim=1)
        return self._quantize_each(latents)

    def combine(self, codewords: Tensor) -> Tensor:
        return codewords.mean(dim=1)


class ProductVQVAEModel(TokenizerModel):
    """``vqvae`` substitute: one encoder ``(B, d) -> (B, K * d_c)``, split into K sub-vectors
    ``(B, K, d_c)`` each quantised by its own codebook (product quantisation, so one quantiser
    yields K tokens); the decoder reads the concatenated codewords ``(B, K * d_c)``. No masking."""

    def __init__(
        self, input_dim: int, n_codebooks: int, codebook_size: int, code_dim: int, hidden_dims: Sequence[int]
    ) -> None:
        super().__init__(input_dim, n_codebooks, codebook_size, code_dim)
        self.code_dim = code_dim
        self.encoder = MLP(input_dim, hidden_dims, n_codebooks * code_dim)
        self.decoder = MLP(n_codebooks * code_dim, list(reversed(hidden_dims)), input_dim)

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        latents = self.encoder(x).view(x.shape[0], self.n_codebooks, self.code_dim)
        return self._quantize_each(latents)

    def combine(self, codewords: Tensor) -> Tensor:
        return codewords.flatten(start_dim=1)


class ResidualVQVAEModel(TokenizerModel):
    """``rqvae`` substitute: one encoder ``(B, d) -> (B, d_c)``; codebook k quantises the residual
    ``r_k = r_{k-1} - sg[c_{k-1}]`` (``r_1 = z``); the decoder reads the SUM of the K codewords.

    The residual is taken against the *detached* codeword so that each codebook is trained only by
    its own codebook term; the encoder still receives every level's commitment gradient.
    """

    def __init__(
        self, input_dim: int, n_codebooks: int, codebook_size: int, code_dim: int, hidden_dims: Sequence[int]
    ) -> None:
        super().__init__(input_dim, n_codebooks, codebook_size, code_dim)
        self.encoder: nn.Module = MLP(input_dim, hidden_dims, code_dim)
        self.decoder = MLP(code_dim, list(reversed(hidden_dims)), input_dim)

    def quantize(self, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        residual = self.encoder(x)
        latents, codes, words = [], [], []
        for cb in self.codebooks:
            code, word = cb(residual)
            latents.append(residual)
            codes.append(code)
            words.append(word)
            residual = residual - word.detach()
        return torch.stack(latents, dim=1), torch.stack(codes, dim=1), torch.stack(words, dim=1)

    def combine(self, codewords: Tensor) -> Tensor:
        return codewords.sum(dim=1)

    def straight_through(self, latents: Tensor, codewords: Tensor) -> Tensor:
        # sum_k c_k approximates z = latents[:, 0]; pass the decoder gradient to z once (the
        # generic per-level version would count it K times, since every residual depends on z).
        z = latents[:, 0]
        return z + (self.combine(codewords) - z).detach()


class ResidualKMeansModel(ResidualVQVAEModel):
    """``kmeans`` substitute: residual quantisation of the (standardised) raw embeddings with K
    codebooks of dimension d, fitted by K rounds of k-means (round k clusters the residuals left by
    rounds < k). No network: encoder and decoder are identities; reconstruction = sum of codewords.
    """

    trainable = False

    def __init__(self, input_dim: int, n_codebooks: int, codebook_size: int) -> None:
        TokenizerModel.__init__(self, input_dim, n_codebooks, codebook_size, input_dim)
        self.encoder = nn.Identity()
        self.decoder = nn.Identity()


def build_model(config: TokenizerConfig, input_dim: int) -> TokenizerModel:
    """The untrained model for ``config.quantizer`` and embeddings of dimension ``input_dim``."""
    c = config
    if c.quantizer == "mq":
        return MQTokenizerModel(
            input_dim, c.n_codebooks, c.codebook_size, c.code_dim, c.hidden_dims, c.mask_ratio, c.shared_encoder
        )
    if c.quantizer == "rqvae":
        return ResidualVQVAEModel(input_dim, c.n_codebooks, c.codebook_size, c.code_dim, c.hidden_dims)
    if c.quantizer == "vqvae":
        return ProductVQVAEModel(input_dim, c.n_codebooks, c.codebook_size, c.code_dim, c.hidden_dims)
    if c.quantizer == "kmeans":
        return ResidualKMeansModel(input_dim, c.n_codebooks, c.codebook_size)
    raise ValueError(f"unknown quantizer {c.quantizer!r}")  # unreachable: config validates it
