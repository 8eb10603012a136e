"""Token strings for prompts: codes ``(N, K)`` <-> ``"<u1-128><u2-21><u3-35>"``.

A token is ``<{prefix}{k}-{code}>`` with ``k`` the 1-based codebook number and ``code`` the
0-based codeword index. Prefixes are letters/underscores only, so a token parses unambiguously
and two different prefixes (``u`` for users, ``i`` for items) can never produce the same token:
the user and item vocabularies are disjoint by construction.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

import numpy as np
import torch

USER_TOKEN_PREFIX = "u"
ITEM_TOKEN_PREFIX = "i"

_PREFIX_RE = re.compile(r"[A-Za-z_]+")


def _check_prefix(prefix: str) -> None:
    # A digit or '-' in the prefix would make "<u1-5>" ambiguous ("u" + codebook 1 vs "u1" + ...).
    if not isinstance(prefix, str) or not _PREFIX_RE.fullmatch(prefix):
        raise ValueError(f"token prefix must be non-empty letters/underscores (e.g. 'u', 'i'), got {prefix!r}")


def token(prefix: str, codebook: int, code: int) -> str:
    """One token: ``token("u", 0, 128) == "<u1-128>"`` (``codebook`` is 0-based here)."""
    return f"<{prefix}{codebook + 1}-{code}>"


def token_vocabulary(n_codebooks: int, codebook_size: int, prefix: str) -> list[str]:
    """All ``K * L`` tokens for one tokenizer, codebook-major
    (``<u1-0> ... <u1-{L-1}> <u2-0> ...``): what the language model adds to its tokenizer."""
    _check_prefix(prefix)
    return [token(prefix, k, c) for k in range(n_codebooks) for c in range(codebook_size)]


def codes_to_token_strings(codes: np.ndarray | torch.Tensor, prefix: str) -> list[str]:
    """One string of K concatenated tokens per id: ``(N, K)`` -> ``N`` strings."""
    _check_prefix(prefix)
    if isinstance(codes, torch.Tensor):
        codes = codes.detach().cpu().numpy()
    codes = np.asarray(codes)
    if codes.ndim != 2:
        raise ValueError(f"codes must have shape (n_ids, K), got {codes.shape}")
    if codes.size and codes.min() < 0:
        raise ValueError("codes must be non-negative")
    return ["".join(token(prefix, k, int(c)) for k, c in enumerate(row)) for row in codes.tolist()]


def token_strings_to_codes(strings: Iterable[str], prefix: str, n_codebooks: int) -> np.ndarray:
    """Inverse of :func:`codes_to_token_strings`: ``N`` strings -> int64 ``(N, K)``.

    Raises:
        ValueError: a string is not exactly K tokens ``<{prefix}1-..>...<{prefix}K-..>`` in order.
    """
    _check_prefix(prefix)
    pattern = re.compile(re.escape(f"<{prefix}") + r"(\d+)-(\d+)>")
    rows = []
    for s in strings:
        matches = list(pattern.finditer(s))
        books = [int(m.group(1)) for m in matches]
        if books != list(range(1, n_codebooks + 1)) or "".join(m.group(0) for m in matches) != s:
            raise ValueError(f"{s!r} is not {n_codebooks} tokens <{prefix}1-..>...<{prefix}{n_codebooks}-..>")
        rows.append([int(m.group(2)) for m in matches])
    return np.asarray(rows, dtype=np.int64).reshape(-1, n_codebooks)
