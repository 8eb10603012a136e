"""Inference time per user: TokenRec's generative retrieval vs P5-style beam-search generation (paper Table V).

    python -m benchmarks.inference_speed [--device cuda] [--item-tokens PATH] [--help]

Both recommenders use the same backbone (default: the packaged all-MiniLM-L6-v2), the same item catalogue
(synthetic random codes, or the tokenization stage's ``item_tokens.parquet``), the same prompts (a user's
tokens plus a short item history, about 60 tokens) and the same work per user: return the top-k items,
the history excluded.

* TokenRec: ``LLM4Rec.encode_prompts`` (one forward pass) + exact faiss search over all items.
* Generation: the same backbone with the autoregressive item-code decoder of
  :mod:`tokenrec_pipeline.models.autoregressive`; constrained beam search over the K code steps, the beams
  mapped to items.
* With an encoder-decoder backbone also "P5's decoding": ``transformers``' own ``generate(num_beams=W,
  prefix_allowed_tokens_fn=...)`` over the same model and trie, the way P5 and its successors decode (a
  Python callback per beam and step, full-vocabulary log-softmax). Same model, same K steps, same beams: the
  difference between the two beam-search rows is the decoding implementation, not the model.

Each is timed at batch 64 and at batch 1 (one request per user), all in one process, round-robin over
repetitions after a warm-up, and reported as the median: ratios are meaningful on a noisy shared machine
even when absolute times are not. Weights are untrained (random head, fresh ID tokens): the amount of
computation does not depend on them -- constrained beam search always runs K steps over W beams.

On CPU torch runs with 1 thread unless ``--threads`` says otherwise: on a machine whose cores are shared,
extra intra-op threads mostly wait for each other (batch-1 latency got 5-10x worse with 2 threads on the
2-core development machine). ``--backbone t5-small-random`` builds a randomly initialised T5-small-sized
model (the paper's backbone, 60M parameters, MiniLM's WordPiece vocabulary) so that the paper's setting --
TokenRec on T5 vs generation with T5's own 6-layer decoder and full-vocabulary LM head -- can be timed
offline.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from tokenrec_pipeline.evaluation.item_index import build_item_index, search
from tokenrec_pipeline.models.autoregressive import (
    AutoregressiveConfig,
    AutoregressiveRecommender,
    CodeTrie,
    build_autoregressive,
    ranked_items,
)
from tokenrec_pipeline.models.llm4rec import (
    DEFAULT_BACKBONE,
    LLM4RecConfig,
    build_llm4rec,
    minilm_model_dir,
    resolve_device,
)
from tokenrec_pipeline.models.tokenizers.tokens import codes_to_token_strings, token_vocabulary

RANDOM_T5_SMALL = "t5-small-random"
PAPER_TABLE_V = "paper Table V (T5-small, GPU): TokenRec 5.8-8.4 ms/user vs P5/POD/CID 85-101 ms/user, 11-15x"


@dataclass
class Method:
    """One timed configuration: ``run()`` serves ``n_users`` users once."""

    name: str
    batch: int
    n_users: int
    run: Callable[[], object]
    warmup: Callable[[], object]
    seconds: list[float]


def _item_codes(args: argparse.Namespace, rng: np.random.Generator) -> tuple[np.ndarray, int, str]:
    """(I, K) item codes, L, and a description of where they came from."""
    if args.item_tokens is not None:
        import pandas as pd

        table = pd.read_parquet(args.item_tokens)
        columns = sorted((c for c in table.columns if c.startswith("token_")), key=lambda c: int(c.split("_")[1]))
        if not columns:
            raise SystemExit(f"{args.item_tokens} has no token_1..token_K columns (the tokenization stage's table).")
        if "id" in table.columns:
            table = table.sort_values("id")
        codes = table[columns].to_numpy(dtype=np.int64)
        size = max(args.codebook_size, int(codes.max()) + 1)
        return codes, size, f"from {args.item_tokens}"
    codes = rng.integers(0, args.codebook_size, size=(args.n_items, args.codebooks), dtype=np.int64)
    return codes, args.codebook_size, "synthetic random codes"


def _prompts(
    n: int, user_codes: np.ndarray, item_codes: np.ndarray, history: int, rng: np.random.Generator
) -> tuple[list[str], list[list[int]]]:
    """Prompts in the paper's style ("According to what items the user_<..> has interacted with: ...")."""
    user_strings = codes_to_token_strings(user_codes, "u")
    item_strings = codes_to_token_strings(item_codes, "i")
    prompts, histories = [], []
    for row in range(n):
        items = rng.choice(item_codes.shape[0], size=history, replace=False).tolist()
        listed = ", ".join(f"item_{item_strings[i]}" for i in items)
        prompts.append(
            f"According to what items the user_{user_strings[row]} has interacted with: {listed}. "
            "Can you recommend the next item for this user?"
        )
        histories.append(items)
    return prompts, histories


def _timed(fn: Callable[[], object], device: torch.device) -> float:
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    fn()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


class TrieTokenConstraint:
    """P5's constraint for ``transformers``' ``generate``: the item-code tokens a prefix trie allows next.

    Built once per model and catalogue (outside any timing); its answers are memoised per decoded prefix, as
    P5's dictionary trie answers them.

    Args:
        model: An autoregressive recommender whose decoder is the backbone's own (encoder-decoder, e.g. T5).
        trie: The item code trie (any device; the callback uses a CPU copy).
    """

    def __init__(self, model: AutoregressiveRecommender, trie: CodeTrie) -> None:
        if model.decoder_kind != "backbone":
            raise ValueError("transformers' generate needs the backbone's own decoder (an encoder-decoder model).")
        self.n_codebooks = trie.n_codebooks
        self.code_token_ids = model.code_token_ids.cpu()  # (K, L)
        self.code_of_token = [
            {int(t): c for c, t in enumerate(self.code_token_ids[k].tolist())} for k in range(self.n_codebooks)
        ]
        eos = model.backbone.model.generation_config.eos_token_id
        self.eos = int(eos[0] if isinstance(eos, list) else eos if eos is not None else model.tokenizer.sep_token_id)
        items = torch.arange(trie.n_items, device=trie.device)
        self.trie = CodeTrie(trie.codes_of_items(items).cpu(), trie.codebook_size)
        self._allowed: dict[tuple[int, ...], list[int]] = {}
        self._node: dict[tuple[int, ...], int] = {(): 0}

    def _node_of(self, prefix: tuple[int, ...]) -> int:
        if prefix not in self._node:
            parent = self._node_of(prefix[:-1])
            child = -1 if parent < 0 else self.trie.children(len(prefix) - 1, torch.tensor([parent]))[0, prefix[-1]]
            self._node[prefix] = int(child)
        return self._node[prefix]

    def allowed_after(self, prefix: tuple[int, ...]) -> list[int]:
        """Vocabulary ids allowed after the codes ``prefix``: the next codebook's real children, else EOS."""
        if prefix not in self._allowed:
            level, node = len(prefix), self._node_of(prefix)
            if level == self.n_codebooks or node < 0:
                self._allowed[prefix] = [self.eos]
            else:
                children = self.trie.children(level, torch.tensor([node]))[0]
                self._allowed[prefix] = self.code_token_ids[level][children >= 0].tolist()
        return self._allowed[prefix]

    def __call__(self, _batch_id: int, decoded: Tensor) -> list[int]:
        """``prefix_allowed_tokens_fn``: ``decoded`` is one beam's decoder ids, the start token first."""
        tokens = decoded.tolist()[1 : 1 + self.n_codebooks]
        codes = tuple(self.code_of_token[k].get(t, -1) for k, t in enumerate(tokens))
        return [self.eos] if -1 in codes else self.allowed_after(codes)

    def leaves(self, sequences: Tensor) -> Tensor:
        """(N, S) generated decoder ids -> (N,) leaf (tuple) ids, -1 for a sequence that is no item."""
        generated = sequences[:, 1 : 1 + self.n_codebooks].cpu()
        if generated.shape[1] < self.n_codebooks:
            return torch.full((generated.shape[0],), -1, dtype=torch.long)
        codes = torch.tensor(
            [[self.code_of_token[k].get(int(t), -1) for k, t in enumerate(row)] for row in generated.tolist()],
            dtype=torch.long,
        )
        return self.trie.lookup(codes)


def transformers_beam_search(
    model: AutoregressiveRecommender, constraint: TrieTokenConstraint, prompts: list[str], beam: int, batch_size: int
) -> np.ndarray:
    """P5's decoding: ``transformers``' ``generate`` with beam search constrained by a prefix trie.

    Args:
        model: The autoregressive recommender ``constraint`` was built for.
        constraint: :class:`TrieTokenConstraint` of the model and catalogue.
        prompts: N prompts.
        beam: W, beams kept and tuples returned per prompt.
        batch_size: Prompts per ``generate`` call.

    Returns:
        (N, W) int64 leaf (tuple) ids, best first; -1 only where ``generate`` found fewer real tuples than W.
    """
    leaves = []
    for start in range(0, len(prompts), batch_size):
        batch = model.backbone.tokenize(prompts[start : start + batch_size])
        sequences = model.backbone.model.generate(
            **batch, num_beams=beam, num_return_sequences=beam, max_new_tokens=constraint.n_codebooks + 1,
            do_sample=False, prefix_allowed_tokens_fn=constraint, eos_token_id=constraint.eos,
            decoder_start_token_id=model.backbone.decoder_start_token_id(), pad_token_id=model.tokenizer.pad_token_id,
        )
        leaves.append(constraint.leaves(sequences).view(-1, beam).numpy())
    return np.concatenate(leaves, axis=0).astype(np.int64)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--backbone", default=DEFAULT_BACKBONE, help="hub id, local folder, MiniLM alias, or t5-small-random"
    )
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads on CPU (0: torch's default)")
    parser.add_argument("--n-items", type=int, default=3000, help="synthetic catalogue size")
    parser.add_argument("--codebooks", type=int, default=3, help="K tokens per item / user")
    parser.add_argument("--codebook-size", type=int, default=256, help="L codes per codebook")
    parser.add_argument("--item-tokens", type=Path, default=None, help="item token table (Parquet, token_1..token_K)")
    parser.add_argument("--users", type=int, default=128, help="users timed at --batch-size")
    parser.add_argument("--single-users", type=int, default=16, help="users timed one request at a time")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--history", type=int, default=6, help="history items per prompt (6 -> ~63 tokens)")
    parser.add_argument("--beams", type=int, nargs="+", default=[10, 20])
    parser.add_argument("--top-k", type=int, default=20, help="items returned per user")
    parser.add_argument("--head-layers", type=int, default=2, help="decoder layers of the generation head")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    device = resolve_device(args.device)
    if device.type == "cpu" and args.threads > 0:
        torch.set_num_threads(args.threads)
    args.backbone_label = args.backbone
    with tempfile.TemporaryDirectory(prefix="inference-speed-") as scratch:
        if args.backbone == RANDOM_T5_SMALL:
            args.backbone_label = "T5-small-sized, random weights"
            args.backbone = _random_t5_small(Path(scratch))
        _run(args, device)


def _random_t5_small(folder: Path) -> str:
    """A T5-small-sized model (T5Config defaults: d_model 512, 6+6 layers, 8 heads) with random weights and the
    packaged MiniLM tokenizer, saved to ``folder``: the paper's backbone, offline, for timing only."""
    from transformers import AutoModelForSeq2SeqLM, AutoTokenizer, T5Config

    tokenizer = AutoTokenizer.from_pretrained(minilm_model_dir(), local_files_only=True)
    config = T5Config(
        vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, decoder_start_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.sep_token_id,
    )
    torch.manual_seed(0)
    AutoModelForSeq2SeqLM.from_config(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _run(args: argparse.Namespace, device: torch.device) -> None:
    """Build both recommenders, time them, print the table and the summary line."""
    rng = np.random.default_rng(args.seed)
    torch.manual_seed(args.seed)
    item_codes, codebook_size, source = _item_codes(args, rng)
    n_items, k = item_codes.shape
    n_prompts = args.users + args.single_users
    user_codes = rng.integers(0, codebook_size, size=(n_prompts, k), dtype=np.int64)
    prompts, histories = _prompts(n_prompts, user_codes, item_codes, args.history, rng)
    batched_prompts, batched_histories = prompts[: args.users], histories[: args.users]
    single_prompts, single_histories = prompts[args.users :], histories[args.users :]
    user_tokens = token_vocabulary(k, codebook_size, "u")
    item_tokens = token_vocabulary(k, codebook_size, "i")

    print("building models ...", flush=True)
    started = time.perf_counter()
    llm4rec = build_llm4rec(
        LLM4RecConfig(backbone=args.backbone, cf_dim=64, max_length=128, truncation_side="right", item_space="cosine",
                      head="plain", id_token_table=False, inference_precision="fp32"),
        user_tokens, item_tokens, device=device,
    ).eval()
    item_vectors = torch.randn(n_items, 64, generator=torch.Generator().manual_seed(args.seed))
    index = build_item_index(item_vectors, use_gpu="auto" if device.type == "cuda" else False)
    generator_model = build_autoregressive(
        AutoregressiveConfig(
            backbone=args.backbone, n_codebooks=k, codebook_size=codebook_size, max_length=128,
            truncation_side="right", head_layers=args.head_layers, inference_precision="fp32",
        ),
        user_tokens,
        device=device,
    ).eval()
    trie = CodeTrie(item_codes, codebook_size).to(device)
    p5_constraint = TrieTokenConstraint(generator_model, trie) if generator_model.decoder_kind == "backbone" else None
    n_tokens = [len(t) for t in llm4rec.tokenizer(prompts[:32])["input_ids"]]
    build_seconds = time.perf_counter() - started

    top_k = args.top_k
    bs = args.batch_size

    def retrieve(batch_prompts: list[str], batch_histories: list[list[int]], batch_size: int) -> object:
        z = llm4rec.encode_prompts(batch_prompts, batch_size=batch_size)
        return search(index, z, top_k, exclude=batch_histories)

    def generate(batch_prompts: list[str], batch_histories: list[list[int]], beam: int, batch_size: int) -> object:
        output = generator_model.generate(
            batch_prompts, trie, beam_size=beam, mode="constrained", exclude=batch_histories, batch_size=batch_size
        )
        return ranked_items(output, trie, top_k)

    def hf_generate(batch_prompts: list[str], batch_histories: list[list[int]], beam: int, batch_size: int) -> object:
        # P5 decodes W beams and drops history items afterwards; the timed work is the decoding.
        assert p5_constraint is not None
        return transformers_beam_search(generator_model, p5_constraint, batch_prompts, beam, batch_size)

    def one_by_one(fn: Callable[..., object], *extra: int) -> Callable[[], object]:
        return lambda: [fn([p], [h], *extra) for p, h in zip(single_prompts, single_histories, strict=True)]

    warm_n = min(bs, args.users)

    def timed_pair(name: str, fn: Callable[..., object], *extra: int) -> list[Method]:
        """``fn`` at batch ``bs`` over the batched users, and one request at a time over the single users."""
        return [
            Method(name, bs, args.users, lambda: fn(batched_prompts, batched_histories, *extra, bs),
                   lambda: fn(batched_prompts[:warm_n], batched_histories[:warm_n], *extra, bs), []),
            Method(name, 1, args.single_users, one_by_one(fn, *extra, 1),
                   lambda: fn(single_prompts[:1], single_histories[:1], *extra, 1), []),
        ]

    methods = timed_pair(f"TokenRec: encode + faiss top-{top_k}", retrieve)
    for beam in args.beams:
        methods += timed_pair(f"beam search W={beam}, constrained", generate, beam)
        if p5_constraint is not None:
            methods += timed_pair(f"transformers generate W={beam} (P5)", hf_generate, beam)
    methods = [m for m in methods if m.n_users > 0]

    print("warming up ...", flush=True)
    with torch.inference_mode():
        for method in methods:
            method.warmup()
        # Round-robin, rotating the order: slow phases of a shared machine hit every method alike.
        for repeat in range(args.repeats):
            shift = repeat % len(methods)
            for method in methods[shift:] + methods[:shift]:
                method.seconds.append(_timed(method.run, device))
            print(f"repeat {repeat + 1}/{args.repeats} done", flush=True)

    check = generator_model.generate(
        batched_prompts or single_prompts, trie, beam_size=max(args.beams), mode="constrained",
        exclude=batched_histories or single_histories, batch_size=bs,
    )

    def ms_per_user(method: Method) -> float:
        return 1000.0 * statistics.median(method.seconds) / method.n_users

    reference = {m.batch: ms_per_user(m) for m in methods if m.name.startswith("TokenRec")}
    backbone_name = args.backbone_label if len(args.backbone_label) < 60 else "..." + args.backbone_label[-57:]
    print()
    print("Inference time per user: TokenRec generative retrieval vs beam-search generation (paper Table V)")
    print(f"  backbone {backbone_name} ({llm4rec.backbone.kind}); generation: {generator_model.decoder_kind} decoder"
          + (f" ({args.head_layers} layers)" if generator_model.decoder_kind == "head" else ""))
    print(f"  device {device}" + (f", torch threads {torch.get_num_threads()}" if device.type == "cpu" else "")
          + f"; model build {build_seconds:.1f}s")
    print(f"  items {n_items:,} (K={k}, L={codebook_size}, {source}; {trie.n_tuples:,} distinct tuples, "
          f"collision rate {trie.collision_rate:.4f})")
    print(f"  prompts: {args.users} at batch {bs} + {args.single_users} at batch 1, {np.mean(n_tokens):.0f} tokens "
          f"on average, {args.history} history items excluded; top-{top_k} items per user")
    print(f"  weights UNTRAINED (timing only); median of {args.repeats} round-robin repeats after warm-up")
    print()
    print(f"  {'method':<40} {'batch':>5} {'ms/user':>9} {'users/s':>9} {'vs TokenRec':>12}")
    for method in methods:
        ms = ms_per_user(method)
        ratio = ms / reference[method.batch] if method.batch in reference else float("nan")
        print(f"  {method.name:<40} {method.batch:>5} {ms:>9.2f} {1000.0 / ms:>9.1f} {ratio:>11.2f}x")
    print()
    print(f"  constrained beam W={max(args.beams)}: {check.n_invalid} invalid of {check.n_generated} generated tuples; "
          f"{(ranked_items(check, trie, top_k)[0] >= 0).mean():.3f} of top-{top_k} slots filled")
    print(f"  {PAPER_TABLE_V}")
    parts = []
    for batch in sorted(reference, reverse=True):
        for method in methods:
            if method.batch == batch and method.name.startswith("beam") and f"W={max(args.beams)}," in method.name:
                parts.append(
                    f"batch {batch}: {ms_per_user(method) / reference[batch]:.1f}x "
                    f"({reference[batch]:.1f} vs {ms_per_user(method):.1f} ms/user)"
                )
    p5_parts = [
        f"batch {m.batch}: {ms_per_user(m) / reference[m.batch]:.1f}x"
        for m in methods
        if m.name.startswith("transformers") and f"W={max(args.beams)} " in m.name and m.batch in reference
    ]
    print(f"SUMMARY: TokenRec retrieval vs constrained beam-{max(args.beams)} generation on {device}: "
          + "; ".join(parts)
          + (f"; vs transformers generate (P5's decoding): {'; '.join(p5_parts)}" if p5_parts else "")
          + " (speed-up = generation time / retrieval time)")


if __name__ == "__main__":
    main()
