"""Decoding: the paper's way (`generate` + prefix_allowed_tokens_fn, one user at a time) vs the
fast path (batched constrained beam search over the trie tables) on the bundle's test split.

Measures (a) the test set's wall time by each path and their ratio, (b) per-request latency
at batch 1 and batch 32 for both, (c) the share of fast-path decode time spent on the trie
constraint, (d) the floor: the same forward passes (encoder, one decoder call per step over
the same batch of beams, KV cache) run by the fast path's decoder code (genrec.t5_decoding)
without any search logic, at batch 1 and in the test-set batches; for comparison, also the
same passes through `transformers`' own cached T5 forward (`hf_floor_s`). Checks the top-k
lists match.
"""

from __future__ import annotations

import time

import torch

from genrec.beam_search import SearchProfile, constrained_beam_search, reference_generate_topk
from genrec.bundle import load_bundle
from genrec.device import autocast, describe, model_device
from genrec.idgenrec.recommender import IdGenRecRecommender
from genrec.method import RuntimeOptions, load_method
from genrec.t5_decoding import BeamDecoder, start_tokens
from genrec.tensors import pad_batch
from genrec.trie import TextualIdTrie

from .common import load_split, mean, parser, plot_path, print_table, pyplot, setup, write_json


def build_requests(recommender, split, users, max_history):
    """(prompt ids, excluded item indices) per user: the test prompt, whole visible history excluded."""
    prompts, exclude = [], []
    for user in users:
        prompts.append(recommender.prompt_ids(split.history(user, "test", max_history)))
        seen = split.history(user, "test", 10**9)
        exclude.append(sorted({recommender.trie.index_of(i) for i in seen} - {None}))
    return prompts, exclude


@torch.inference_mode()
def floor_decode(model, prompts, num_beams: int, steps: int) -> None:
    """The fast path's forward passes alone: encoder, the first step once per request, then
    `steps - 1` decoder steps over all beams (genrec.t5_decoding), each with its output head
    and log-softmax normaliser over the whole vocabulary."""
    config = model.config
    device = model_device(model)
    ids, mask = pad_batch(prompts, config.pad_token_id, device=device)
    hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    decoder = BeamDecoder(model, hidden, mask)
    state = decoder.step_hidden(start_tokens(model, len(prompts), hidden.device))
    decoder.token_log_probs(state, torch.zeros((len(prompts), 1), dtype=torch.long, device=device))
    decoder.expand(num_beams)
    tokens = torch.full((len(prompts) * num_beams,), 5, dtype=torch.long, device=device)
    for _ in range(steps - 1):
        decoder.token_log_probs(decoder.step_hidden(tokens), tokens[:, None])
    synchronize(device)  # the timer stops when the GPU is done, as the searches' top-k waits for it


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@torch.inference_mode()
def hf_floor_decode(model, prompts, num_beams: int, steps: int) -> None:
    """The same passes through `transformers`' cached T5 forward: encoder, then `steps` decoder
    calls over all beams with the cross-attention keys/values repeated per beam."""
    config = model.config
    device = model_device(model)
    ids, mask = pad_batch(prompts, config.pad_token_id, device=device)
    hidden = model.get_encoder()(input_ids=ids, attention_mask=mask).last_hidden_state
    hidden = hidden.repeat_interleave(num_beams, dim=0)
    mask = mask.repeat_interleave(num_beams, dim=0)
    tokens = torch.full((hidden.shape[0], 1), config.decoder_start_token_id, dtype=torch.long, device=device)
    past = None
    for _ in range(steps):
        out = model(
            encoder_outputs=(hidden,),
            attention_mask=mask,
            decoder_input_ids=tokens,
            past_key_values=past,
            use_cache=True,
        )
        past = out.past_key_values
        torch.log_softmax(out.logits[:, -1, :].float(), dim=-1)
        tokens = torch.full_like(tokens, 5)
    synchronize(device)


TIE = 1e-5  # reference scores closer than this are a tie that float rounding may order either way


def same_up_to_ties(fast, reference) -> bool:
    """The same items in the same order, except adjacent items whose reference scores tie (the
    two paths round differently in the last bits, so the order of a tie is not defined)."""
    if {s.item_index for s in fast} != {s.item_index for s in reference}:
        return False
    score = {s.item_index: s.score for s in reference}
    return all(
        a.item_index == b.item_index or abs(score[a.item_index] - score[b.item_index]) < TIE
        for a, b in zip(fast, reference, strict=True)
    )


def bf16_check(model, prompts, exclude, tables, beams, args, ref_results) -> dict:
    """The fast path over the test set under bf16 autocast against the fp32 reference's top-k:
    its time, how many users keep the same top-k (in order; as sets), the largest score
    difference relative to the reference score. bf16 keeps 8 bits of mantissa (a relative step
    of 2^-8), so scores differ by a few tenths of a percent and near-ties may swap."""
    device = model_device(model)
    if device.type != "cuda":
        return {"bf16": "skipped: bf16 autocast runs on CUDA only"}
    with autocast(device, "bf16"):
        constrained_beam_search(model, prompts[:2], tables, beams, args.k, exclude[:2])  # warm-up
        start = time.perf_counter()
        found = []
        for chunk_p, chunk_e in zip(batches(prompts, args.batch), batches(exclude, args.batch), strict=True):
            found += constrained_beam_search(model, chunk_p, tables, beams, args.k, chunk_e)
        seconds = time.perf_counter() - start
    pairs = list(zip(found, ref_results, strict=True))
    return {
        "bf16_fast_eval_s": seconds,
        "bf16_identical_topk_users": sum([a.item_index for a in x] == [b.item_index for b in y] for x, y in pairs),
        "bf16_same_topk_sets_users": sum({a.item_index for a in x} == {b.item_index for b in y} for x, y in pairs),
        "bf16_min_topk_overlap": min((len({a.item_index for a in x} & {b.item_index for b in y}) / max(len(y), 1)
                                      for x, y in pairs), default=1.0),
        "bf16_max_rel_score_diff": max((abs(a.score - b.score) / max(abs(b.score), 1e-9)
                                        for x, y in pairs for a, b in zip(x, y, strict=False)), default=0.0),
    }


def batches(seq, size):
    return [seq[i : i + size] for i in range(0, len(seq), size)]


def main(argv=None) -> dict:
    p = parser(__doc__.splitlines()[0])
    p.add_argument("--users", type=int, default=200, help="test users to decode (default 200)")
    p.add_argument("--k", type=int, default=10)
    p.add_argument(
        "--beams", type=int, default=None, help="beam width (default: the bundle's eval.num_beams)"
    )
    p.add_argument("--batch", type=int, default=32, help="fast-path batch size for the test set")
    p.add_argument("--latency-users", type=int, default=64, help="users timed at batch 1 / 32 (default 64)")
    p.add_argument(
        "--no-exclude",
        action="store_true",
        help="do not exclude the history (the reference then skips building a trie per request)",
    )
    p.add_argument("--device", default="auto", help="auto (a GPU when there is one), cpu, cuda or cuda:N")
    p.add_argument("--bf16", action="store_true",
                   help="also decode the test set under bf16 autocast (CUDA only) and compare with the fp32 reference")
    args = p.parse_args(argv)
    setup(args)
    bundle = load_bundle(args.bundle)
    config = bundle.train_config
    model, tok = load_method(bundle, RuntimeOptions(device=args.device)).recommender_model, bundle.tokenizer
    beams = max(args.beams or config.eval.num_beams, args.k)
    max_history = config.data.max_history
    trie = TextualIdTrie(
        [i.item_id for i in bundle.items], [i.token_ids for i in bundle.items], tok.eos_token_id
    )
    tables = trie.tables()
    recommender = IdGenRecRecommender(
        model,
        tok,
        trie,
        max_history=max_history,
        max_source_length=config.recommender.max_source_length,
    )
    split = load_split(bundle).split
    users = split.users[: args.users]
    prompts, exclude = build_requests(recommender, split, users, max_history)
    if args.no_exclude:
        exclude = [[] for _ in users]
    n = len(users)
    print(
        f"bundle {args.bundle}: {len(trie)} items, {n} test users, k={args.k}, beams={beams}, "
        f"torch threads={torch.get_num_threads()}, device {describe(model_device(model))}"
    )

    # Warm-up (first calls allocate).
    constrained_beam_search(model, prompts[:2], tables, beams, args.k, exclude[:2])
    reference_generate_topk(model, prompts[:1], trie, beams, args.k, exclude[:1])

    # (a) The test set: reference one at a time, fast path in batches.
    ref_results, ref_times = [], []
    for prompt, banned in zip(prompts, exclude, strict=True):
        start = time.perf_counter()
        ref_results += reference_generate_topk(model, [prompt], trie, beams, args.k, [banned])
        ref_times.append(time.perf_counter() - start)
    fast_results = []
    profile = SearchProfile()
    start = time.perf_counter()
    for chunk_p, chunk_e in zip(batches(prompts, args.batch), batches(exclude, args.batch), strict=True):
        fast_results += constrained_beam_search(
            model, chunk_p, tables, beams, args.k, chunk_e, profile=profile
        )
    fast_eval_s = time.perf_counter() - start
    ref_eval_s = sum(ref_times)

    identical = sum(
        [s.item_index for s in a] == [s.item_index for s in b]
        for a, b in zip(fast_results, ref_results, strict=True)
    )
    max_score_diff = max(
        (
            abs(x.score - y.score)
            for a, b in zip(fast_results, ref_results, strict=True)
            for x, y in zip(a, b, strict=False)
        ),
        default=0.0,
    )
    up_to_ties = sum(same_up_to_ties(a, b) for a, b in zip(fast_results, ref_results, strict=True))
    same_sets = sum(
        {s.item_index for s in a} == {s.item_index for s in b}
        for a, b in zip(fast_results, ref_results, strict=True)
    )

    # (b) Latency per request at batch 1 and batch 32.
    m = min(args.latency_users, n)
    fast_b1, floor_b1 = [], []
    for prompt, banned in zip(prompts[:m], exclude[:m], strict=True):
        one = SearchProfile()
        start = time.perf_counter()
        constrained_beam_search(model, [prompt], tables, beams, args.k, [banned], profile=one)
        fast_b1.append(time.perf_counter() - start)
        start = time.perf_counter()
        floor_decode(model, [prompt], beams, one.steps + 1)
        floor_b1.append(time.perf_counter() - start)
    ref_b1 = ref_times[:m]
    fast_b32, ref_b32 = [], []
    for chunk_p, chunk_e in zip(
        batches(prompts[: max(m, 32)], 32), batches(exclude[: max(m, 32)], 32), strict=True
    ):
        start = time.perf_counter()
        constrained_beam_search(model, chunk_p, tables, beams, args.k, chunk_e)
        fast_b32.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference_generate_topk(model, chunk_p, trie, beams, args.k, chunk_e)
        ref_b32.append(time.perf_counter() - start)

    # (c) Constraint share and (d) the floor, over the batches of (a).
    floor_s = hf_floor_s = 0.0
    steps_profile = SearchProfile()
    fast_again = 0.0
    for chunk_p, chunk_e in zip(batches(prompts, args.batch), batches(exclude, args.batch), strict=True):
        steps_profile.steps = 0
        start = time.perf_counter()
        constrained_beam_search(model, chunk_p, tables, beams, args.k, chunk_e, profile=steps_profile)
        fast_again += time.perf_counter() - start
        start = time.perf_counter()
        floor_decode(model, chunk_p, beams, steps_profile.steps + 1)
        floor_s += time.perf_counter() - start
        start = time.perf_counter()
        hf_floor_decode(model, chunk_p, beams, steps_profile.steps + 1)
        hf_floor_s += time.perf_counter() - start

    bf16 = bf16_check(model, prompts, exclude, tables, beams, args, ref_results) if args.bf16 else {}

    result = {
        "device": str(model_device(model)),
        "users": n,
        "exclude_history": not args.no_exclude,
        "items": len(trie),
        "k": args.k,
        "num_beams": beams,
        "batch": args.batch,
        "torch_threads": torch.get_num_threads(),
        "ref_eval_s": ref_eval_s,
        "fast_eval_s": fast_eval_s,
        "speedup_eval": ref_eval_s / fast_eval_s,
        "ref_latency_batch1_ms": 1000 * mean(ref_b1),
        "fast_latency_batch1_ms": 1000 * mean(fast_b1),
        "speedup_batch1": mean(ref_b1) / mean(fast_b1),
        "ref_latency_batch32_ms": 1000 * mean(ref_b32),
        "fast_latency_batch32_ms": 1000 * mean(fast_b32),
        "speedup_batch32": mean(ref_b32) / mean(fast_b32),
        "identical_topk": identical == n,
        "identical_topk_users": identical,
        "same_topk_sets_users": same_sets,
        "identical_topk_up_to_ties": up_to_ties == n,
        "identical_up_to_ties_users": up_to_ties,
        "max_score_diff": max_score_diff,
        "mask_s": profile.mask_s,
        "mask_share": profile.mask_s / fast_eval_s,
        "floor_s": floor_s,
        "fast_s_second_run": fast_again,
        "floor_ratio": fast_again / floor_s,
        "floor_batch1_ms": 1000 * mean(floor_b1),
        "floor_ratio_batch1": mean(fast_b1) / mean(floor_b1),
        "hf_floor_s": hf_floor_s,
        "fast_over_hf_floor": fast_again / hf_floor_s,
        **bf16,
    }
    if bf16:
        print("bf16 fast path vs the fp32 reference: " + ", ".join(f"{k} {v}" for k, v in bf16.items()))
    print_table(
        "test set",
        ["path", "wall s", "per user ms"],
        [
            ["reference (generate, 1 at a time)", ref_eval_s, 1000 * ref_eval_s / n],
            [f"fast (batches of {args.batch})", fast_eval_s, 1000 * fast_eval_s / n],
            ["speedup", result["speedup_eval"], ""],
        ],
    )
    print_table(
        "latency per request",
        ["batch", "reference ms", "fast ms", "speedup"],
        [
            [1, result["ref_latency_batch1_ms"], result["fast_latency_batch1_ms"], result["speedup_batch1"]],
            [
                32,
                result["ref_latency_batch32_ms"],
                result["fast_latency_batch32_ms"],
                result["speedup_batch32"],
            ],
        ],
    )
    print_table(
        "fast path breakdown",
        ["what", "value"],
        [
            ["constraint (mask) share of decode time", result["mask_share"]],
            [f"floor (forward passes only, batches of {args.batch}) s", floor_s],
            ["fast path s (same batches)", fast_again],
            ["fast / floor", result["floor_ratio"]],
            ["floor at batch 1 ms", result["floor_batch1_ms"]],
            ["fast / floor at batch 1", result["floor_ratio_batch1"]],
            ["transformers' cached forward, same passes s", hf_floor_s],
            ["fast / transformers' forward floor", result["fast_over_hf_floor"]],
            ["identical top-k lists", f"{identical}/{n}"],
            [f"identical up to ties (scores within {TIE:g})", f"{up_to_ties}/{n}"],
            ["same top-k sets", f"{same_sets}/{n}"],
            ["max |score diff|", max_score_diff],
        ],
    )
    write_json(args.out, result)
    png = plot_path(args.out)
    if png is not None:
        plt = pyplot()
        fig, ax = plt.subplots(1, 2, figsize=(9, 3.5))
        ax[0].bar(["reference", "fast"], [ref_eval_s, fast_eval_s])
        ax[0].set_ylabel("test set wall time (s)")
        ax[0].set_title(f"{n} users")
        x = [0, 1]
        ax[1].bar(
            [i - 0.2 for i in x],
            [result["ref_latency_batch1_ms"], result["ref_latency_batch32_ms"]],
            0.4,
            label="reference",
        )
        ax[1].bar(
            [i + 0.2 for i in x],
            [result["fast_latency_batch1_ms"], result["fast_latency_batch32_ms"]],
            0.4,
            label="fast",
        )
        ax[1].set_xticks(x, ["batch 1", "batch 32"])
        ax[1].set_ylabel("latency per request (ms)")
        ax[1].set_yscale("log")
        ax[1].legend()
        fig.tight_layout()
        fig.savefig(png, dpi=100)
        print(f"wrote {png}")
    return result


if __name__ == "__main__":
    main()
