"""Tests of the ID tokenizers (MQ-Tokenizer and its substitutes). Tiny inputs: the file runs in
a few seconds on 2 CPU cores."""

from __future__ import annotations

import json

import faiss
import numpy as np
import pytest
import torch

from tokenrec_pipeline.models.tokenizers import (
    ITEM_TOKEN_PREFIX,
    QUANTIZERS,
    USER_TOKEN_PREFIX,
    BernoulliMask,
    FittedTokenizer,
    TokenizerConfig,
    TokenizerConfigError,
    build_model,
    codebook_perplexity,
    codebook_utilisation,
    codes_to_token_strings,
    collision_rate,
    fit_tokenizer,
    kmeans_init_codebooks,
    load_tokenizer,
    token_strings_to_codes,
    token_vocabulary,
    tokenizer_diagnostics,
    vq_losses,
)

D = 16  # embedding dim of the toy data
SMALL = {
    "n_codebooks": 3,
    "codebook_size": 16,
    "code_dim": 8,
    "hidden_dims": [32],
    "epochs": 6,
    "batch_size": 64,
    "patience": 3,
    "valid_fraction": 0.1,
    "kmeans_iters": 10,
    "seed": 0,
    "device": "cpu",
}


def clustered(n_clusters: int = 8, per_cluster: int = 25, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Well-separated Gaussian clusters: embeddings (n, D) float32 and cluster labels (n,)."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(scale=4.0, size=(n_clusters, D))
    labels = np.repeat(np.arange(n_clusters), per_cluster)
    x = centres[labels] + rng.normal(scale=0.5, size=(labels.size, D))
    return x.astype(np.float32), labels


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """The toy problems are far too small for threads: on a shared 2-core machine OpenMP
    spin-waiting makes them 10x slower, not faster. Restored after the module."""
    torch_threads, faiss_threads = torch.get_num_threads(), faiss.omp_get_max_threads()
    torch.set_num_threads(1)
    faiss.omp_set_num_threads(1)
    yield
    torch.set_num_threads(torch_threads)
    faiss.omp_set_num_threads(faiss_threads)


@pytest.fixture(scope="module")
def data() -> tuple[np.ndarray, np.ndarray]:
    return clustered()


#: Cluster experiments: 64 codewords, i.e. 8 cells per cluster per codebook.
CLUSTER_PARAMS = {**SMALL, "codebook_size": 64, "epochs": 20, "patience": 20}


@pytest.fixture(scope="module")
def fitted_mq(data: tuple[np.ndarray, np.ndarray]) -> FittedTokenizer:
    return fit_tokenizer(data[0], CLUSTER_PARAMS)


# ----------------------------------------------------------------------------- config


def test_config_defaults_match_the_paper() -> None:
    cfg = TokenizerConfig()
    assert (cfg.quantizer, cfg.n_codebooks, cfg.codebook_size) == ("mq", 3, 256)
    assert (cfg.mask_ratio, cfg.beta, cfg.shared_encoder) == (0.2, 0.25, False)


def test_config_round_trips_through_a_plain_dict() -> None:
    cfg = TokenizerConfig.from_dict({**SMALL, "quantizer": "rqvae"})
    assert cfg.hidden_dims == (32,)
    assert TokenizerConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    ("params", "parameter"),
    [
        ({"quantizer": "pq"}, "quantizer"),
        ({"codebook_size": 1}, "codebook_size"),
        ({"n_codebooks": True}, "n_codebooks"),
        ({"n_codebooks": 2.5}, "n_codebooks"),
        ({"mask_ratio": 1.0}, "mask_ratio"),
        ({"mask_ratio": -0.1}, "mask_ratio"),
        ({"beta": "high"}, "beta"),
        ({"hidden_dims": [64, 0]}, "hidden_dims"),
        ({"shared_encoder": "yes"}, "shared_encoder"),
        ({"lr": 0}, "lr"),
        ({"valid_fraction": 1.0}, "valid_fraction"),
        ({"device": "not-a-device"}, "device"),
        ({"codebok_size": 64}, "codebok_size"),  # typo: unknown keys are an error
    ],
)
def test_bad_config_names_the_parameter(params: dict, parameter: str) -> None:
    with pytest.raises(TokenizerConfigError, match=rf"tokenizer\.{parameter}") as info:
        TokenizerConfig.from_dict(params)
    assert info.value.parameter == f"tokenizer.{parameter}"


def test_error_uses_the_callers_parameter_prefix() -> None:
    with pytest.raises(TokenizerConfigError, match=r"item_tokenizer\.beta"):
        TokenizerConfig.from_dict({"beta": -1}, param_prefix="item_tokenizer")


def test_too_few_embeddings_for_the_codebook_is_a_clear_error() -> None:
    x = np.zeros((20, D), dtype=np.float32)
    with pytest.raises(TokenizerConfigError, match="codebook_size") as info:
        fit_tokenizer(x, {**SMALL, "codebook_size": 32})
    assert info.value.parameter == "tokenizer.codebook_size"


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA present")
def test_cuda_without_cuda_names_device() -> None:
    with pytest.raises(TokenizerConfigError, match=r"tokenizer\.device"):
        fit_tokenizer(np.zeros((40, D), dtype=np.float32), {**SMALL, "device": "cuda"})


def test_bad_embeddings_are_rejected() -> None:
    x = np.ones((40, D), dtype=np.float32)
    x[3, 2] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        fit_tokenizer(x, SMALL)
    with pytest.raises(ValueError, match="2-D"):
        fit_tokenizer(np.ones(D), SMALL)


# ----------------------------------------------------------------------------- model mechanics


def test_bernoulli_mask_only_in_training() -> None:
    torch.manual_seed(0)
    mask, x = BernoulliMask(0.25), torch.ones(400, 50)
    mask.train()
    zero_share = float((mask(x) == 0).float().mean())
    assert 0.2 < zero_share < 0.3
    mask.eval()
    assert torch.equal(mask(x), x)


@pytest.mark.parametrize("quantizer", ["mq", "rqvae", "vqvae"])
def test_stop_gradients_route_each_loss_term_as_on_the_slides(quantizer: str) -> None:
    """Reconstruction reaches the encoders (straight-through) but not the codebooks; the codebook
    term trains only the codebooks; the commitment term trains only the encoders."""
    torch.manual_seed(0)
    cfg = TokenizerConfig.from_dict({**SMALL, "quantizer": quantizer})
    model = build_model(cfg, D)
    x = torch.from_numpy(clustered()[0][:100])
    kmeans_init_codebooks(model, x, n_iter=5, seed=0)
    encoders = list(model.encoders) if quantizer == "mq" else [model.encoder]
    assert len(encoders) == (cfg.n_codebooks if quantizer == "mq" else 1)

    def grads(term: str) -> tuple[list[float], list[float]]:
        model.zero_grad(set_to_none=False)
        model.train()
        getattr(vq_losses(x, model(x), cfg.beta), term).backward()
        enc = [float(e[0].weight.grad.abs().sum()) for e in encoders]
        cbs = [float(cb.weight.grad.abs().sum()) if cb.weight.grad is not None else 0.0 for cb in model.codebooks]
        return enc, cbs

    enc, cbs = grads("recon")
    assert all(g > 0 for g in enc), "reconstruction gradient must reach every encoder"
    assert all(g == 0 for g in cbs), "reconstruction must not move the codebooks (straight-through)"
    enc, cbs = grads("codebook")
    assert all(g == 0 for g in enc) and all(g > 0 for g in cbs)
    enc, cbs = grads("commitment")
    assert all(g > 0 for g in enc) and all(g == 0 for g in cbs)


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_kmeans_init_gives_distinct_codewords(quantizer: str) -> None:
    torch.manual_seed(0)
    cfg = TokenizerConfig.from_dict({**SMALL, "quantizer": quantizer})
    model = build_model(cfg, D)
    x = torch.from_numpy(clustered()[0])
    kmeans_init_codebooks(model, x, n_iter=10, seed=0)
    for codebook in model.codebooks:
        words = codebook.weight.detach().numpy()
        assert np.unique(words, axis=0).shape[0] == cfg.codebook_size


def test_shared_encoder_ablation_has_one_encoder_and_runs(data: tuple[np.ndarray, np.ndarray]) -> None:
    fitted = fit_tokenizer(data[0], {**SMALL, "shared_encoder": True, "epochs": 2})
    assert len(fitted.model.encoders) == 1
    assert fitted.encode(data[0]).shape == (len(data[0]), 3)


def test_no_masking_ablation_runs(data: tuple[np.ndarray, np.ndarray]) -> None:
    fitted = fit_tokenizer(data[0], {**SMALL, "mask_ratio": 0.0, "epochs": 2})
    assert fitted.model.mask.ratio == 0.0
    assert fitted.encode(data[0]).shape == (len(data[0]), 3)


# ----------------------------------------------------------------------------- fitting and encoding


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_shapes_and_ranges(quantizer: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    x = data[0]
    fitted = fit_tokenizer(x, {**SMALL, "quantizer": quantizer})
    codes = fitted.encode(x)
    assert codes.shape == (len(x), 3) and codes.dtype == np.int64
    assert codes.min() >= 0 and codes.max() < 16
    assert fitted.reconstruct(x).shape == x.shape
    assert fitted.decode(codes).shape == x.shape
    expected_dim = D if quantizer == "kmeans" else 8
    assert fitted.codebook_vectors().shape == (3, 16, expected_dim)
    assert fitted.n_train + fitted.n_valid == len(x) and fitted.n_valid == 20
    assert fitted.history and "valid_recon_mse" in fitted.history[-1]


def test_torch_input_gives_the_same_codes(fitted_mq: FittedTokenizer, data: tuple[np.ndarray, np.ndarray]) -> None:
    assert np.array_equal(fitted_mq.encode(torch.from_numpy(data[0])), fitted_mq.encode(data[0]))


def test_history_records_every_term(fitted_mq: FittedTokenizer) -> None:
    init, first = fitted_mq.history[0], fitted_mq.history[1]
    assert init["epoch"] == 0 and set(init) == {"epoch", "valid_recon_mse", "utilisation_min", "train_collision_rate"}
    assert set(first) == set(init) | {"loss", "recon", "codebook", "commitment", "reseeded", "lr", "seconds"}
    assert [h["epoch"] for h in fitted_mq.history] == list(range(len(fitted_mq.history)))
    best = min(h["valid_recon_mse"] for h in fitted_mq.history)
    assert fitted_mq.history[fitted_mq.best_epoch]["valid_recon_mse"] == best


@pytest.mark.parametrize("quantizer", ["mq", "kmeans"])
def test_same_seed_same_tokens(quantizer: str, data: tuple[np.ndarray, np.ndarray]) -> None:
    params = {**SMALL, "quantizer": quantizer}
    state = torch.get_rng_state()
    first = fit_tokenizer(data[0], params).encode(data[0])
    assert torch.equal(torch.get_rng_state(), state), "fitting must not consume the caller's global RNG"
    torch.manual_seed(123)  # a different global state must not matter either
    second = fit_tokenizer(data[0], params).encode(data[0])
    assert np.array_equal(first, second)


def test_encode_single_new_vector_equals_batch_row(fitted_mq: FittedTokenizer) -> None:
    rng = np.random.default_rng(7)
    new = rng.normal(scale=4.0, size=(5, D)).astype(np.float32)  # ids never seen in fitting
    batch = fitted_mq.encode(new)
    for i in range(len(new)):
        single = fitted_mq.encode(new[i])
        assert single.shape == (3,)
        assert np.array_equal(single, batch[i])
    assert fitted_mq.reconstruct(new[0]).shape == (D,)


def test_encode_rejects_wrong_dimension(fitted_mq: FittedTokenizer) -> None:
    with pytest.raises(ValueError, match=f"\\(n, {D}\\)"):
        fitted_mq.encode(np.zeros((2, D + 1), dtype=np.float32))


#: Upper bounds on the collision rate on the toy clusters (measured over 2 data x 2 model seeds:
#: kmeans 0.0, rqvae 0.04-0.13, mq 0.50-0.63, vqvae 0.53-0.65). The within-cluster variation of
#: this toy is isotropic noise, which the learned auto-encoders largely compress away, and MQ's K
#: parallel branches all see the same dominant (cluster) structure, so their partitions are
#: correlated: MQ collides far more here than on real CF embeddings (1-3 % on LastFM items).
MAX_COLLISIONS = {"kmeans": 0.05, "rqvae": 0.25, "mq": 0.8, "vqvae": 0.8}


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_clusters_share_first_token_and_rarely_collide(
    quantizer: str, fitted_mq: FittedTokenizer, data: tuple[np.ndarray, np.ndarray]
) -> None:
    x, labels = data
    fitted = fitted_mq if quantizer == "mq" else fit_tokenizer(x, {**CLUSTER_PARAMS, "quantizer": quantizer})
    codes = fitted.encode(x)
    collisions = collision_rate(codes)
    assert collisions < MAX_COLLISIONS[quantizer]
    # K tokens separate ids far better than the first token alone (which mostly names the cluster)
    assert collisions < 0.8 * collision_rate(codes[:, :1])
    same_cluster = labels[:, None] == labels[None, :]
    off_diagonal = ~np.eye(len(x), dtype=bool)
    same_first = codes[:, 0][:, None] == codes[:, 0][None, :]
    p_same = same_first[same_cluster & off_diagonal].mean()
    p_chance = same_first[off_diagonal].mean()  # what a cluster-blind tokenisation would give
    assert p_same > 3 * p_chance
    assert same_first[~same_cluster].mean() < 0.01  # different clusters almost never share it


@pytest.mark.parametrize("quantizer", QUANTIZERS)
def test_save_load_round_trip(quantizer: str, data: tuple[np.ndarray, np.ndarray], tmp_path) -> None:
    x = data[0]
    fitted = fit_tokenizer(x, {**SMALL, "quantizer": quantizer, "epochs": 2})
    fitted.save(tmp_path / quantizer)
    files = sorted(p.name for p in (tmp_path / quantizer).iterdir())
    assert files == ["config.json", "history.json", "model.safetensors"]  # no pickle anywhere
    loaded = load_tokenizer(tmp_path / quantizer)
    assert loaded.config == fitted.config
    assert loaded.history == fitted.history and loaded.best_epoch == fitted.best_epoch
    assert np.array_equal(loaded.encode(x), fitted.encode(x))
    np.testing.assert_array_equal(loaded.reconstruct(x), fitted.reconstruct(x))


def test_load_missing_directory_is_clear(tmp_path) -> None:
    with pytest.raises(FileNotFoundError, match="config.json"):
        load_tokenizer(tmp_path)


# ----------------------------------------------------------------------------- diagnostics


def test_collision_and_usage_on_known_codes() -> None:
    codes = np.array([[0, 0], [0, 0], [1, 2], [3, 1]])
    assert collision_rate(codes) == 0.5
    np.testing.assert_allclose(codebook_utilisation(codes, 4), [0.75, 0.75])
    # codebook 1: probabilities (1/2, 1/4, 1/4) -> perplexity 2^1.5
    np.testing.assert_allclose(codebook_perplexity(codes, 4), [2**1.5, 2**1.5])
    assert collision_rate(np.arange(6).reshape(3, 2)) == 0.0


def test_tokenizer_diagnostics(fitted_mq: FittedTokenizer, data: tuple[np.ndarray, np.ndarray]) -> None:
    x = data[0]
    codes = fitted_mq.encode(x)
    diag = tokenizer_diagnostics(codes, x, fitted_mq)
    assert diag["n_ids"] == len(x)
    assert diag["collision_rate"] == collision_rate(codes)
    assert 1 <= diag["n_distinct_tuples"] <= len(x)
    for k in (1, 2, 3):
        assert 0 < diag[f"codebook{k}_utilisation"] <= 1
        assert 1 <= diag[f"codebook{k}_perplexity"] <= fitted_mq.codebook_size
    assert diag["recon_mse"] == pytest.approx(float(np.mean((fitted_mq.reconstruct(x) - x) ** 2)), rel=1e-5)
    assert 0 < diag["recon_mse_relative"] < 1  # better than predicting the mean vector
    assert diag["fit_seconds"] > 0
    assert all(isinstance(v, float) for v in diag.values())  # MLflow-ready


# ----------------------------------------------------------------------------- token strings


def test_token_strings_match_the_paper_format() -> None:
    codes = np.array([[128, 21, 35], [42, 12, 98]])
    assert codes_to_token_strings(codes, USER_TOKEN_PREFIX) == ["<u1-128><u2-21><u3-35>", "<u1-42><u2-12><u3-98>"]
    strings = codes_to_token_strings(codes, ITEM_TOKEN_PREFIX)
    assert strings[1] == "<i1-42><i2-12><i3-98>"
    assert np.array_equal(token_strings_to_codes(strings, ITEM_TOKEN_PREFIX, 3), codes)


def test_vocabularies_are_complete_and_disjoint(
    fitted_mq: FittedTokenizer, data: tuple[np.ndarray, np.ndarray]
) -> None:
    users = token_vocabulary(3, 16, USER_TOKEN_PREFIX)
    items = token_vocabulary(3, 16, ITEM_TOKEN_PREFIX)
    assert len(users) == len(set(users)) == 48 and users[0] == "<u1-0>" and users[-1] == "<u3-15>"
    assert not set(users) & set(items)
    # every token a real tokenisation emits is in the vocabulary
    vocabulary = token_vocabulary(fitted_mq.n_codebooks, fitted_mq.codebook_size, ITEM_TOKEN_PREFIX)
    emitted = "".join(codes_to_token_strings(fitted_mq.encode(data[0]), ITEM_TOKEN_PREFIX))
    assert set(emitted.replace(">", ">\n").split()) <= set(vocabulary)


@pytest.mark.parametrize("prefix", ["", "u1", "i-", "<u>", "ü"])
def test_ambiguous_prefixes_are_rejected(prefix: str) -> None:
    with pytest.raises(ValueError, match="prefix"):
        token_vocabulary(3, 4, prefix)


def test_malformed_token_string_is_rejected() -> None:
    with pytest.raises(ValueError, match="not 3 tokens"):
        token_strings_to_codes(["<u1-3><u2-4>"], "u", 3)
    with pytest.raises(ValueError, match="not 3 tokens"):
        token_strings_to_codes(["<u1-3><u3-4><u2-5>"], "u", 3)


def _reseed_recomputing_every_level(model, x: torch.Tensor, noise: float) -> int:
    """The re-seeding rule with a fresh quantisation pass before every codebook (the reference)."""
    from tokenrec_pipeline.models.tokenizers.training import quantize_all

    replaced = 0
    with torch.no_grad():
        for k, codebook in enumerate(model.codebooks):
            latents, codes, words = quantize_all(model, x)
            dead = (torch.bincount(codes[:, k], minlength=codebook.size) == 0).nonzero().squeeze(1)
            if dead.numel() == 0:
                continue
            z = latents[:, k]
            pool = (z - words[:, k]).pow(2).sum(dim=1).topk(min(z.shape[0], 2 * dead.numel())).indices
            chosen = pool[torch.randperm(pool.numel())[: dead.numel()]]
            codebook.weight[dead] = z[chosen] + torch.randn(dead.numel(), z.shape[1]) * z.std(dim=0) * noise
            replaced += int(dead.numel())
    return replaced


@pytest.mark.parametrize("quantizer", ["mq", "rqvae"])
def test_reseeding_from_a_shared_quantisation_pass_equals_recomputing(quantizer: str) -> None:
    """Re-seeding with the evaluation pass's codes (MQ: one pass for all K codebooks) changes the
    codebooks exactly as recomputing before every level does; residual models still recompute."""
    from tokenrec_pipeline.models.tokenizers.training import quantize_all, reseed_dead_codewords

    x, _ = clustered(n_clusters=8, per_cluster=100)  # 800 points: the worst-served pool is a real choice
    config = TokenizerConfig.from_dict({**SMALL, "quantizer": quantizer, "codebook_size": 32})
    torch.manual_seed(0)
    model = build_model(config, D)
    x_t = torch.from_numpy(x)
    kmeans_init_codebooks(model, x_t, n_iter=5, seed=0)
    with torch.no_grad():  # kill codewords in every codebook: far from every latent
        for codebook in model.codebooks:
            codebook.weight[:8] += 100.0
    twin = build_model(config, D)
    twin.load_state_dict(model.state_dict())
    torch.manual_seed(1)
    reference = _reseed_recomputing_every_level(model, x_t, noise=0.01)
    torch.manual_seed(1)
    shared = reseed_dead_codewords(twin, x_t, noise=0.01, quantized=quantize_all(twin, x_t))
    assert reference == shared == 3 * 8
    for ours, expected in zip(twin.codebooks, model.codebooks, strict=True):
        assert torch.equal(ours.weight, expected.weight)


def test_cosine_lr_schedule_decays_from_lr_to_zero_over_the_epochs() -> None:
    x, _ = clustered()
    constant = fit_tokenizer(x, {**SMALL, "epochs": 4, "patience": 10, "lr": 0.004})
    cosine = fit_tokenizer(x, {**SMALL, "epochs": 4, "patience": 10, "lr": 0.004, "lr_schedule": "cosine"})
    assert [row["lr"] for row in constant.history[1:]] == pytest.approx([0.004] * 4)
    # epoch e (1-based) trains at lr * (1 + cos(pi * (e - 1) / 4)) / 2
    assert [row["lr"] for row in cosine.history[1:]] == pytest.approx([0.004, 0.003414, 0.002, 0.000586], abs=1e-6)
    assert cosine.config.lr_schedule == "cosine"
    with pytest.raises(TokenizerConfigError, match="lr_schedule"):
        TokenizerConfig.from_dict({"lr_schedule": "linear"})
