"""The language model's view of the ID tokens: their own embedding table and the user-code decoder.

Two small modules used by :class:`~tokenrec_pipeline.models.llm4rec.LLM4Rec`:

* :class:`IdTokenEmbeddings` -- the added user/item ID tokens' input embeddings as a parameter of their
  own (``(T, H)``), substituted for the backbone's rows of those tokens. Why: the backbone's embedding
  matrix is one parameter, and its rows of new tokens then train with the backbone's small learning rate
  and weight decay (measured: cos(initial, final) 0.9999 after a default run, i.e. they do not move). A
  separate table gets its own learning rate (``llm4rec.training.token_learning_rate``) and no decay.
* :class:`UserCodeDecoder` -- reads the user's K codes off a prompt's token ids and decodes them with the
  fitted user tokenizer's decoder into the CF space: ``Dec_user(codes) ~ e_u``. The ``residual_user``
  head adds the language model's correction to it: ``z = Dec_user(codes) + Proj(h)``.

Shapes: ``B`` prompts, ``S`` sequence length, ``H`` backbone hidden size, ``T`` ID tokens, ``K`` codebooks,
``L`` codebook size, ``d`` CF dimension.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn

from tokenrec_pipeline.models.tokenizers import FittedTokenizer


def _token_lookup(token_ids: Sequence[int]) -> torch.Tensor:
    """``lookup[id] = j`` for the j-th token id, -1 for every other id (vocabulary-sized long tensor)."""
    ids = torch.as_tensor(list(token_ids), dtype=torch.long)
    size = int(ids.max()) + 1 if ids.numel() else 1
    lookup = torch.full((size,), -1, dtype=torch.long)
    lookup[ids] = torch.arange(ids.numel())
    return lookup


def _positions(lookup: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """(B, S) token ids -> (B, S) index into the token list, -1 where the id is not one of them."""
    inside = input_ids < lookup.shape[0]
    return torch.where(inside, lookup[input_ids.clamp(max=lookup.shape[0] - 1)], torch.full_like(input_ids, -1))


class IdTokenEmbeddings(nn.Module):
    """Input embeddings of the T added ID tokens, trained apart from the backbone's embedding matrix.

    Args:
        token_ids: The T token ids (in the backbone's vocabulary).
        initial: (T, H) initial rows (the backbone's rows after :func:`add_recommendation_tokens`).
    """

    def __init__(self, token_ids: Sequence[int], initial: torch.Tensor) -> None:
        super().__init__()
        if initial.shape[0] != len(token_ids):
            raise ValueError(f"initial has {initial.shape[0]} rows for {len(token_ids)} ID tokens.")
        self.weight = nn.Parameter(initial.detach().float().clone())
        self.register_buffer("lookup", _token_lookup(token_ids), persistent=False)

    def forward(self, input_ids: torch.Tensor, embeddings: torch.Tensor) -> torch.Tensor:
        """(B, S) ids and the backbone's (B, S, H) input embeddings -> the same with ID-token rows replaced."""
        index = _positions(self.lookup, input_ids)
        rows = self.weight[index.clamp(min=0)].to(embeddings.dtype)
        return torch.where((index >= 0).unsqueeze(-1), rows, embeddings)


class UserCodeDecoder(nn.Module):
    """``Dec_user``: the fitted user tokenizer's decoder (frozen), fed the K user codes of each prompt.

    The codes are read off the prompt: the first token of each codebook among the user-token ids.
    Prompts in which some codebook's token is missing (cut off by truncation) decode to a zero vector.

    Args:
        tokenizer: The fitted user tokenizer (its model is copied into this module and frozen).
        user_token_ids: The K*L user token ids, codebook-major (``<u1-0> .. <u1-{L-1}> <u2-0> ..``).
    """

    def __init__(self, tokenizer: FittedTokenizer, user_token_ids: Sequence[int]) -> None:
        super().__init__()
        n_codebooks, codebook_size = tokenizer.n_codebooks, tokenizer.codebook_size
        if len(user_token_ids) != n_codebooks * codebook_size:
            raise ValueError(f"{len(user_token_ids)} user token ids for a K={n_codebooks} x L={codebook_size} "
                             "user tokenizer; the language model and the tokenizer come from different runs.")
        # A copy: moving or freezing it must not change the caller's tokenizer (the catalog's object).
        self.tokenizer = copy.deepcopy(tokenizer)
        self.model = self.tokenizer.model
        self.model.eval()
        for parameter in self.model.parameters():
            parameter.requires_grad_(False)
        self.n_codebooks, self.codebook_size = n_codebooks, codebook_size
        self.register_buffer("lookup", _token_lookup(user_token_ids), persistent=False)

    def train(self, mode: bool = True) -> UserCodeDecoder:
        """The tokenizer stays in eval mode (no masking) whatever the language model does."""
        super().train(mode)
        self.model.eval()
        return self

    def codes(self, input_ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, S) ids -> ((B, K) codes, (B,) bool: all K codes found)."""
        index = _positions(self.lookup, input_ids)
        codebook = torch.where(index >= 0, index // self.codebook_size, torch.full_like(index, -1))
        codes, found = [], []
        for k in range(self.n_codebooks):
            hit = codebook == k
            first = hit.long().argmax(dim=1, keepdim=True)  # first position of codebook k's token
            codes.append((index.gather(1, first).squeeze(1) % self.codebook_size).clamp(min=0))
            found.append(hit.any(dim=1))
        return torch.stack(codes, dim=1), torch.stack(found, dim=1).all(dim=1)

    @torch.no_grad()
    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        """(B, S) ids -> (B, d) decoded user vectors (original CF units; zeros where codes are missing)."""
        codes, found = self.codes(input_ids)
        decoded = self.model.standardizer.inverse(self.model.decode(codes)).float()
        return decoded * found.unsqueeze(1).to(decoded.dtype)
