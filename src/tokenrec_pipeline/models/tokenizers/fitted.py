"""A fitted tokenizer: encode/decode any embedding (seen or new) and save/load without pickle.

On disk (one directory per tokenizer):

- ``config.json``: the :class:`TokenizerConfig` fields plus ``input_dim``, ``format_version`` and the
  fit summary (``fit_seconds``, ``best_epoch``, ``n_train``, ``n_valid``);
- ``model.safetensors``: every weight and buffer (codebooks, encoders, decoder, standardiser);
- ``history.json``: the per-epoch training history (loss terms, held-out recon MSE, utilisation).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from .config import TokenizerConfig
from .modules import TokenizerModel, build_model

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"
HISTORY_FILE = "history.json"


class FittedTokenizer:
    """A trained tokenizer (eval mode, CPU) with its config and training record.

    Attributes:
        config: the hyper-parameters it was fitted with.
        model: the underlying :class:`TokenizerModel`.
        history: one dict per epoch, ready for MLflow. Epoch 0 is the k-means init
            (``valid_recon_mse``, ``utilisation_min``, ``train_collision_rate``); training epochs add
            the mean loss terms ``loss``, ``recon``, ``codebook``, ``commitment`` and ``reseeded``
            (codewords re-seeded after that epoch). ``valid_recon_mse`` is per-element, original units.
        fit_seconds: wall-clock fit time.
        best_epoch: the epoch whose weights were kept (0: the k-means init, always for ``kmeans``).
        n_train: embeddings used for training; n_valid: held out for early stopping.
        token_prefix: the letter of its tokens (``u`` -> ``<u1-42>``), set by the tokenization stage and saved
            with the tokenizer, so every later stage writes and reads the same tokens without the parameters.
    """

    def __init__(
        self,
        config: TokenizerConfig,
        model: TokenizerModel,
        history: list[dict[str, float]],
        fit_seconds: float,
        best_epoch: int,
        n_train: int,
        n_valid: int,
        token_prefix: str | None = None,
    ) -> None:
        self.config = config
        self._token_prefix = token_prefix
        self.model = model.cpu().eval()
        self.history = history
        self.fit_seconds = float(fit_seconds)
        self.best_epoch = int(best_epoch)
        self.n_train = int(n_train)
        self.n_valid = int(n_valid)

    @property
    def token_prefix(self) -> str:
        """The token letter (``u`` / ``i``); raises when the tokenizer was fitted or saved without one."""
        if not self._token_prefix:
            raise ValueError("This tokenizer has no token prefix (saved by an older version, or fitted outside the "
                             "tokenization stage): re-run `kedro run --pipeline=tokenization`, or set token_prefix.")
        return self._token_prefix

    @token_prefix.setter
    def token_prefix(self, prefix: str) -> None:
        if not isinstance(prefix, str) or not prefix.isalnum():
            raise ValueError(
                f"tokenizer.<side>.token_prefix must be letters/digits such as 'u' or 'i', got {prefix!r}."
            )
        self._token_prefix = prefix

    def __repr__(self) -> str:
        return (
            f"FittedTokenizer(quantizer={self.config.quantizer!r}, K={self.n_codebooks}, "
            f"L={self.codebook_size}, input_dim={self.input_dim}, best_epoch={self.best_epoch})"
        )

    # ------------------------------------------------------------------ shapes
    @property
    def input_dim(self) -> int:
        """d, the embedding dimension it accepts."""
        return self.model.input_dim

    @property
    def n_codebooks(self) -> int:
        """K, tokens per id."""
        return self.config.n_codebooks

    @property
    def codebook_size(self) -> int:
        """L, codewords per codebook."""
        return self.config.codebook_size

    # ------------------------------------------------------------------ inference
    def _to_tensor(self, embeddings: Any) -> tuple[torch.Tensor, bool]:
        """Float32 CPU tensor ``(N, d)`` and whether the input was a single 1-D vector."""
        if isinstance(embeddings, torch.Tensor):
            x = embeddings.detach().to("cpu", torch.float32)
        else:
            x = torch.as_tensor(np.asarray(embeddings, dtype=np.float32))
        single = x.ndim == 1
        if single:
            x = x.unsqueeze(0)
        if x.ndim != 2 or x.shape[1] != self.input_dim:
            raise ValueError(
                f"embeddings must have shape (n, {self.input_dim}) (or ({self.input_dim},) for one id), "
                f"got {tuple(x.shape)}: the tokenizer was fitted on {self.input_dim}-d embeddings"
            )
        if not torch.isfinite(x).all():
            raise ValueError("embeddings contain NaN or infinite values")
        return x, single

    @torch.no_grad()
    def encode(self, embeddings: np.ndarray | torch.Tensor, batch_size: int = 8192) -> np.ndarray:
        """Tokens of any embeddings, including ids never seen in fitting (no refit, no masking).

        Args:
            embeddings: ``(N, d)`` (or one ``(d,)`` vector), numpy or torch.
            batch_size: rows per forward pass.

        Returns:
            int64 codes ``(N, K)`` in ``[0, L)`` (``(K,)`` for a 1-D input).
        """
        x, single = self._to_tensor(embeddings)
        x = self.model.standardizer(x)
        codes = torch.cat([self.model.encode(x[i : i + batch_size]) for i in range(0, x.shape[0], batch_size)])
        out = codes.numpy().astype(np.int64)
        return out[0] if single else out

    @torch.no_grad()
    def decode(self, codes: np.ndarray | torch.Tensor) -> np.ndarray:
        """Embeddings reconstructed from codes: ``(N, K)`` -> float32 ``(N, d)``, original units."""
        c = torch.as_tensor(np.asarray(codes), dtype=torch.long)
        if c.ndim != 2 or c.shape[1] != self.n_codebooks:
            raise ValueError(f"codes must have shape (n, {self.n_codebooks}), got {tuple(c.shape)}")
        if c.numel() and (int(c.min()) < 0 or int(c.max()) >= self.codebook_size):
            raise ValueError(f"codes must lie in [0, {self.codebook_size}), got [{int(c.min())}, {int(c.max())}]")
        return self.model.standardizer.inverse(self.model.decode(c)).numpy()

    def reconstruct(self, embeddings: np.ndarray | torch.Tensor) -> np.ndarray:
        """``decode(encode(embeddings))``: float32 ``(N, d)`` in the original units (``(d,)`` for
        a 1-D input)."""
        codes = self.encode(embeddings)
        recon = self.decode(codes.reshape(-1, self.n_codebooks))
        return recon[0] if codes.ndim == 1 else recon

    def codebook_vectors(self) -> np.ndarray:
        """All codewords, float32 ``(K, L, D)`` (D = d_c; d for ``kmeans``), e.g. to initialise the
        language model's embeddings of the added tokens."""
        return torch.stack([cb.weight.detach() for cb in self.model.codebooks]).numpy().copy()

    # ------------------------------------------------------------------ persistence
    def save(self, directory: str | Path) -> Path:
        """Write ``config.json``, ``model.safetensors`` and ``history.json`` into ``directory``
        (created if needed) and return its path."""
        path = Path(directory)
        path.mkdir(parents=True, exist_ok=True)
        meta = {
            "format_version": FORMAT_VERSION,
            "input_dim": self.input_dim,
            "fit_seconds": self.fit_seconds,
            "best_epoch": self.best_epoch,
            "n_train": self.n_train,
            "n_valid": self.n_valid,
            "token_prefix": self._token_prefix,
            "config": self.config.to_dict(),
        }
        (path / CONFIG_FILE).write_text(json.dumps(meta, indent=2))
        (path / HISTORY_FILE).write_text(json.dumps(self.history, indent=1))
        # contiguous() because safetensors refuses views (e.g. transposed weights).
        state = {name: t.detach().contiguous() for name, t in self.model.state_dict().items()}
        save_file(state, str(path / WEIGHTS_FILE), metadata={"format": "tokenrec-tokenizer"})
        return path


def load_tokenizer(directory: str | Path) -> FittedTokenizer:
    """Load a tokenizer written by :meth:`FittedTokenizer.save` (safetensors + JSON; no pickle).

    Raises:
        FileNotFoundError: a file is missing (names which one).
        ValueError: the saved format version is newer than this code understands.
    """
    path = Path(directory)
    for name in (CONFIG_FILE, WEIGHTS_FILE):
        if not (path / name).is_file():
            raise FileNotFoundError(f"{path / name} not found: is {path} a directory written by FittedTokenizer.save?")
    meta = json.loads((path / CONFIG_FILE).read_text())
    if meta.get("format_version", 0) > FORMAT_VERSION:
        raise ValueError(
            f"{path / CONFIG_FILE} has format_version {meta['format_version']}; this code reads <= {FORMAT_VERSION}"
        )
    config = TokenizerConfig.from_dict(meta["config"], param_prefix=f"{path / CONFIG_FILE}:config")
    model = build_model(config, int(meta["input_dim"]))
    model.load_state_dict(load_file(str(path / WEIGHTS_FILE)))
    history_file = path / HISTORY_FILE
    history = json.loads(history_file.read_text()) if history_file.is_file() else []
    return FittedTokenizer(
        config=config,
        model=model,
        history=history,
        fit_seconds=meta.get("fit_seconds", float("nan")),
        best_epoch=meta.get("best_epoch", 0),
        n_train=meta.get("n_train", 0),
        n_valid=meta.get("n_valid", 0),
        token_prefix=meta.get("token_prefix"),
    )
