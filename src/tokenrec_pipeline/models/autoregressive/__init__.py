"""Autoregressive (P5-style) baseline: generate the target item's K code tokens with beam search.

TokenRec retrieves items in one forward pass (prompt -> z -> faiss). The paper compares it with LLM
recommenders that instead *generate* an item identifier token by token and decode with beam search
(P5, POD, CID; paper Table V). This module is that comparison, built on the same pieces as
:mod:`tokenrec_pipeline.models.llm4rec`: the same backbone, the same prompts with the same ID tokens,
and the same item code table (each item = K codes ``<i1-a><i2-b><i3-c>``, one per codebook of size L).

Architecture (``AutoregressiveConfig.decoder``):

* ``"backbone"`` -- encoder-decoder checkpoints (T5, P5's own backbone; ``AutoModelForSeq2SeqLM``): the
  model's own decoder generates the item tokens that were added to its vocabulary (tied with the input
  embeddings, as in P5). At step k the LM-head logits are read only at the L tokens of codebook k: the
  *format* ``<i1-.><i2-.><i3-.>`` is enforced by construction (P5 may also emit free text; this is a
  little kinder to the baseline), item *validity* is not.
* ``"head"`` -- every other backbone (the project's default all-MiniLM-L6-v2 is encoder-only; decoder-only
  models such as GPT-2 work the same way): a small Transformer decoder (``nn.TransformerDecoder``, pre-LN,
  default 2 layers of the backbone's width) cross-attends to the backbone's per-token hidden states and
  predicts codebook k's L codes at step k. Its input vocabulary is the K*L code tokens plus BOS. Why a head
  rather than turning BERT into a decoder: MiniLM has no causal LM weights to reuse, and a fresh shallow
  decoder over a frozen-width memory is what "put an autoregressive decoder on an encoder" means in
  seq2seq practice (BERT2BERT-style warm starts would also need the cross-attention trained from scratch).
  ``"auto"`` picks ``"backbone"`` for encoder-decoder checkpoints and ``"head"`` otherwise.

Decoding (:meth:`AutoregressiveRecommender.generate`): batched beam search over K steps, sequence score =
sum of per-step log-probabilities.

* ``mode="unconstrained"``: any K-tuple in ``[0, L)^K`` may come out; it is mapped to items through the
  code table (:class:`CodeTrie`), and a tuple that is no item's code is **invalid** (a hallucinated item).
  Invalid tuples are kept in the output and counted (:attr:`GenerationOutput.n_invalid`), never hidden;
  they simply recommend nothing.
* ``mode="constrained"``: logits of next codes that leave the prefix trie of real item tuples are set to
  -inf *before* the log-softmax, so each step's distribution is renormalised over valid continuations and
  the scores are log-probabilities of a distribution over real items only (they sum to 1 over all items'
  tuples). Only real items are emitted.
* ``exclude`` (both modes): per-prompt item ids never generated (tuples all of whose items are excluded are
  masked), so beam slots are not wasted on the user's history -- the same rule the evaluator applies. In
  constrained mode prefixes that can only end in excluded items are pruned as well.

Items sharing one tuple (token collisions) are all recommended, in ascending item id, with the tuple's
score (:func:`ranked_items`); in a score matrix they tie, and the evaluator resolves ties by expected rank.

Efficiency (the point of the comparison, so the baseline is not handicapped): the prompt is encoded once;
the head precomputes the cross-attention keys/values once per prompt and lets all beams of a prompt query
them in one batched attention (no copy per beam); self-attention keys/values are cached across steps and
reordered with the beams. The ``"backbone"`` path uses transformers' own encoder-decoder cache
(``reorder_cache``) and, like P5, computes the LM head over the whole vocabulary at every step (only the L
codes of the current codebook are then read); restricting the head's matrix product to those L rows would
give the same scores for less work and is not done. Beam bookkeeping runs on the model's device.

Modules (every public name is re-exported here):

* :mod:`~tokenrec_pipeline.models.autoregressive.trie` -- :class:`CodeTrie`, the item code table as a prefix trie.
* :mod:`~tokenrec_pipeline.models.autoregressive.config` -- :class:`AutoregressiveConfig`, decoder/decoding
  mode names, the saved folder's file names.
* :mod:`~tokenrec_pipeline.models.autoregressive.head` -- :class:`CodeDecoderHead` (the ``"head"`` decoder).
* :mod:`~tokenrec_pipeline.models.autoregressive.generation` -- :class:`GenerationOutput`, :func:`ranked_items`,
  :func:`generation_score_matrix`, :func:`generation_score_fn`.
* :mod:`~tokenrec_pipeline.models.autoregressive.model` -- :class:`AutoregressiveRecommender` (loss, beam
  search, greedy decoding, saving).
* :mod:`~tokenrec_pipeline.models.autoregressive.persistence` -- :func:`build_autoregressive`,
  :func:`load_autoregressive`.
* :mod:`~tokenrec_pipeline.models.autoregressive.training` -- :class:`AutoregressiveTrainConfig`,
  :func:`train_autoregressive` (on :mod:`tokenrec_pipeline.training.engine`).
* :mod:`~tokenrec_pipeline.models.autoregressive.evaluation` -- :func:`evaluate_generation`.

Shapes: ``N`` prompts, ``B`` prompts in a batch, ``W`` beams per prompt, ``S`` prompt length in tokens,
``H`` backbone hidden size, ``D`` head width, ``K`` codebooks (tokens per item), ``L`` codes per codebook,
``I`` items, ``T`` distinct item tuples (``T <= I``; fewer when tokens collide).
"""


from tokenrec_pipeline.models.autoregressive.config import (
    BACKBONE_DIR,
    CONFIG_FILE,
    DECODE_MODES,
    FORMAT_VERSION,
    HEAD_FILE,
    TOKENIZER_DIR,
    AutoregressiveConfig,
    DecodeMode,
    DecoderKind,
)
from tokenrec_pipeline.models.autoregressive.evaluation import evaluate_generation
from tokenrec_pipeline.models.autoregressive.generation import (
    NEG_INF,
    GenerationOutput,
    generation_score_fn,
    generation_score_matrix,
    ranked_items,
)
from tokenrec_pipeline.models.autoregressive.head import CodeDecoderHead
from tokenrec_pipeline.models.autoregressive.model import AutoregressiveRecommender
from tokenrec_pipeline.models.autoregressive.persistence import build_autoregressive, load_autoregressive
from tokenrec_pipeline.models.autoregressive.training import AutoregressiveTrainConfig, train_autoregressive
from tokenrec_pipeline.models.autoregressive.trie import CodeTrie

__all__ = [
    "BACKBONE_DIR",
    "CONFIG_FILE",
    "DECODE_MODES",
    "FORMAT_VERSION",
    "HEAD_FILE",
    "NEG_INF",
    "TOKENIZER_DIR",
    "AutoregressiveConfig",
    "AutoregressiveRecommender",
    "AutoregressiveTrainConfig",
    "CodeDecoderHead",
    "CodeTrie",
    "DecodeMode",
    "DecoderKind",
    "GenerationOutput",
    "build_autoregressive",
    "evaluate_generation",
    "generation_score_fn",
    "generation_score_matrix",
    "load_autoregressive",
    "ranked_items",
    "train_autoregressive",
]
