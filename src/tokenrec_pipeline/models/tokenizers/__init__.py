"""ID tokenizers: TokenRec's MQ-Tokenizer and the substitutes of the paper's Table VI.

Turns user or item CF embeddings ``(N, d)`` into K discrete tokens each (``<u1-128><u2-21><u3-35>``).

Quantisers (``TokenizerConfig.quantizer``):

- ``mq`` (default): Bernoulli input mask (training only) -> K separate MLP encoders -> one codebook
  each (nearest codeword, straight-through) -> decoder MLP on the MEAN of the K codewords.
  Ablations: ``mask_ratio: 0`` ("w/o Masking"), ``shared_encoder: true`` ("w/o K-way").
- ``rqvae``: one encoder, K residual codebooks, decoder on the SUM of the K codewords.
- ``vqvae``: one encoder with a ``K * code_dim`` latent split into K sub-vectors, each quantised by
  its own codebook (product quantisation); no masking, no K-way encoders.
- ``kmeans``: no network; K rounds of residual k-means (faiss) on the standardised embeddings.

Typical use::

    fitted = fit_tokenizer(item_embeddings, {"quantizer": "mq", "seed": 0})
    codes = fitted.encode(item_embeddings)                  # (N, K) int64
    metrics = tokenizer_diagnostics(codes, item_embeddings, fitted)
    prompts = codes_to_token_strings(codes, ITEM_TOKEN_PREFIX)  # ["<i1-42><i2-12><i3-98>", ...]
    vocab = token_vocabulary(fitted.n_codebooks, fitted.codebook_size, ITEM_TOKEN_PREFIX)
    fitted.save("data/06_models/item_tokenizer"); fitted = load_tokenizer("data/06_models/item_tokenizer")
"""

from .config import QUANTIZERS, TokenizerConfig, TokenizerConfigError
from .diagnostics import (
    codebook_perplexity,
    codebook_utilisation,
    collision_rate,
    tokenizer_diagnostics,
    tuple_counts,
)
from .fitted import FittedTokenizer, load_tokenizer
from .modules import (
    MLP,
    BernoulliMask,
    Codebook,
    MQTokenizerModel,
    ProductVQVAEModel,
    ResidualKMeansModel,
    ResidualVQVAEModel,
    Standardizer,
    TokenizerModel,
    TokenizerOutput,
    build_model,
)
from .tokens import (
    ITEM_TOKEN_PREFIX,
    USER_TOKEN_PREFIX,
    codes_to_token_strings,
    token,
    token_strings_to_codes,
    token_vocabulary,
)
from .training import fit_tokenizer, kmeans_init_codebooks, reseed_dead_codewords, vq_losses

__all__ = [
    "QUANTIZERS",
    "ITEM_TOKEN_PREFIX",
    "USER_TOKEN_PREFIX",
    "MLP",
    "BernoulliMask",
    "Codebook",
    "FittedTokenizer",
    "MQTokenizerModel",
    "ProductVQVAEModel",
    "ResidualKMeansModel",
    "ResidualVQVAEModel",
    "Standardizer",
    "TokenizerConfig",
    "TokenizerConfigError",
    "TokenizerModel",
    "TokenizerOutput",
    "build_model",
    "codebook_perplexity",
    "codebook_utilisation",
    "codes_to_token_strings",
    "collision_rate",
    "fit_tokenizer",
    "kmeans_init_codebooks",
    "load_tokenizer",
    "reseed_dead_codewords",
    "token",
    "token_strings_to_codes",
    "token_vocabulary",
    "tokenizer_diagnostics",
    "tuple_counts",
    "vq_losses",
]
