"""Llama benchmark: phase2_ray's llama against transformers' own `LlamaForCausalLM` holding the same weights,
in-process, side by side in one run, rounds interleaved (ours, theirs, ours, theirs, ...); each ratio is the median
of the per-round ratios with the range over rounds (with 7 or more rounds that range holds the true median ratio with
>= 98% probability, the sign test), so a ratio whose range spans the target is no result.

1. Decode: greedy, `--new` tokens after a `--prompt`-token prompt, at batch 1 (one request, prefill included: what a
   lone client sees) and batch 16 (aggregate tok/s: our engine's continuous batching, BatchDecoder, against
   transformers' static batch `generate` of the same 16 prompts, all of one length so that it pads nothing).
   Targets: >= 1.0x at batch 1, >= 3x at batch 16.
2. Training: one step (forward, backward, AdamW) on the same batch, our llama against `LlamaForCausalLM` (its SDPA
   attention), both from the same weights. Target >= 1.0x. MFU of each: FLOPs per token (core/flops.py: GQA's
   narrower k/v, SwiGLU's three matrices) x tokens/s over the peak matmul FLOP/s measured here.
3. int8 against fp32 decode of the same model (SemanticCompressor, the kernel `auto` picks here), batch 1 and 16,
   and the bytes each holds.

The model is a transformers-built Llama of the bench size (grouped-query attention, 8 heads over 2 key/value heads,
untied head), random weights (speed does not depend on them). torch threads: --threads (default 1, as a Serve
replica and a training actor run). Through HTTP against `transformers serve --continuous-batching`:
`benchmarks/endpoint_bench.py --arch llama --comparison-only`.

usage: .venv/bin/python benchmarks/llama_bench.py [--rounds 7] [--threads 1] [--out FILE]   (~10 min)
       .venv/bin/python benchmarks/llama_bench.py --quick    (what the test suite runs: a tiny model, 2 rounds)"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode_bench import machine  # noqa: E402

from phase2_ray.core.compress import SemanticCompressor, weight_bytes  # noqa: E402
from phase2_ray.core.flops import flops_per_token, measure_peak_flops  # noqa: E402
from phase2_ray.core.generate import BatchDecoder, SamplingParams  # noqa: E402
from phase2_ray.core.llama_format import from_hf, shape_from_config  # noqa: E402
from phase2_ray.core.model import GPTConfig, build_model  # noqa: E402

BENCH = dict(
    vocab_size=8192,
    hidden_size=256,
    intermediate_size=688,
    num_hidden_layers=4,
    num_attention_heads=8,
    num_key_value_heads=2,
    max_position_embeddings=512,
    tie_word_embeddings=False,
)
QUICK = dict(
    vocab_size=512,
    hidden_size=64,
    intermediate_size=128,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
    max_position_embeddings=128,
    tie_word_embeddings=False,
)


def build(shape: dict) -> tuple[torch.nn.Module, torch.nn.Module, GPTConfig]:
    """(transformers' LlamaForCausalLM, ours with the same weights, our config)."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    hf = LlamaForCausalLM(LlamaConfig(**shape, attn_implementation="sdpa")).eval()
    s = shape_from_config(hf.config.to_dict())
    cfg = GPTConfig(**{k: v for k, v in s.items() if k not in ("sliding_window", "model_type")})
    ours = build_model(cfg).eval()
    ours.load_state_dict(from_hf(hf.state_dict(), s))
    return hf, ours, cfg


def ratio_row(ours: list[float], theirs: list[float], higher_is_better: bool) -> dict:
    """Median and range of the per-round ratios, oriented so that > 1 means ours is better."""
    r = [o / t if higher_is_better else t / o for o, t in zip(ours, theirs, strict=True)]
    return {
        "ours": statistics.median(ours),
        "theirs": statistics.median(theirs),
        "ratio": statistics.median(r),
        "range": [min(r), max(r)],
    }


def ours_decode(model, prompts: list[list[int]], new: int) -> float:
    """Aggregate output tok/s of our engine's loop: every prompt admitted, then stepped until all are done."""
    dec = BatchDecoder(model, len(prompts))
    t0 = time.perf_counter()
    dec.add_many([(p, SamplingParams(new, temperature=0), None) for p in prompts])  # as the engine admits
    while dec.active:
        dec.step()
    return len(prompts) * new / (time.perf_counter() - t0)


def hf_decode(hf, prompts: list[list[int]], new: int) -> float:
    x = torch.tensor(prompts)
    t0 = time.perf_counter()
    with torch.inference_mode():
        out = hf.generate(
            x,
            attention_mask=torch.ones_like(x),
            do_sample=False,
            max_new_tokens=new,
            min_new_tokens=new,
            pad_token_id=0,
        )
    dt = time.perf_counter() - t0
    assert out.shape[1] == x.shape[1] + new
    return len(prompts) * new / dt


def workload(cfg: GPTConfig, n: int, seed: int) -> list[tuple[list[int], int]]:
    """`n` requests of mixed prompt and output lengths (uniform, seeded), as a serving workload has: prompts of
    8-40 tokens, outputs of 8-80."""
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(8, 41, (n,), generator=g).tolist()
    outs = torch.randint(8, 81, (n,), generator=g).tolist()
    return [
        (torch.randint(1, cfg.vocab_size, (t,), generator=g).tolist(), o)
        for t, o in zip(lens, outs, strict=True)
    ]


def ours_serving(model, reqs: list[tuple[list[int], int]], slots: int) -> float:
    """Useful output tok/s of our engine's loop over a queue of requests with `slots` sequences at a time:
    continuous batching (a finished sequence's slot takes the next request at once, prefilled packed)."""
    dec, queue = BatchDecoder(model, slots), list(reqs)
    t0 = time.perf_counter()
    while queue or dec.active:
        admit = [queue.pop(0) for _ in range(min(dec.free_slots, len(queue)))]
        if admit:
            dec.add_many([(p, SamplingParams(o, temperature=0), None) for p, o in admit])
        if dec.active:
            dec.step()
    return sum(o for _, o in reqs) / (time.perf_counter() - t0)


def hf_serving(hf, reqs: list[tuple[list[int], int]], slots: int) -> float:
    """The same queue through transformers' `generate` as a static batch: `slots` requests at a time, left-padded
    to the longest prompt, decoded until the longest output (the shorter ones' extra tokens are waste, not
    output); the next batch starts when the whole batch is done."""
    t0 = time.perf_counter()
    for i in range(0, len(reqs), slots):
        chunk = reqs[i : i + slots]
        width = max(len(p) for p, _ in chunk)
        x = torch.tensor([[0] * (width - len(p)) + p for p, _ in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p, _ in chunk])
        new = max(o for _, o in chunk)
        with torch.inference_mode():
            hf.generate(
                x,
                attention_mask=mask,
                do_sample=False,
                max_new_tokens=new,
                min_new_tokens=new,
                pad_token_id=0,
            )
    return sum(o for _, o in reqs) / (time.perf_counter() - t0)


def decode(hf, ours, cfg: GPTConfig, rounds: int, prompt_len: int, new: int, n_mixed: int) -> dict:
    g = torch.Generator().manual_seed(1)
    prompts = torch.randint(1, cfg.vocab_size, (16, prompt_len), generator=g).tolist()
    # the same greedy tokens first: the two sides do the same work
    x = torch.tensor(prompts[:1])
    want = hf.generate(
        x, attention_mask=torch.ones_like(x), do_sample=False, max_new_tokens=8, pad_token_id=0
    )
    dec = BatchDecoder(ours, 1)
    seq = dec.add(prompts[0], SamplingParams(8, temperature=0))
    while dec.active:
        dec.step()
    same = seq.tokens == want[0, prompt_len:].tolist()
    out = {"prompt_tokens": prompt_len, "new_tokens": new, "greedy_tokens_equal": same}
    for batch in (1, 16):
        ps = prompts[:batch]
        ours_decode(ours, ps, 4), hf_decode(hf, ps, 4)  # warm-up
        a, b = [], []
        for _ in range(rounds):
            a.append(ours_decode(ours, ps, new))
            b.append(hf_decode(hf, ps, new))
        out[f"batch{batch}"] = ratio_row(a, b, higher_is_better=True)
    reqs = workload(cfg, n_mixed, seed=4)
    ours_serving(ours, reqs[:16], 16), hf_serving(hf, reqs[:16], 16)
    a, b = [], []
    for _ in range(rounds):
        a.append(ours_serving(ours, reqs, 16))
        b.append(hf_serving(hf, reqs, 16))
    out["mixed16"] = {**ratio_row(a, b, higher_is_better=True), "requests": n_mixed}
    return out


def train_step_s(model, opt, x, y, hf: bool) -> float:
    t0 = time.perf_counter()
    if hf:
        logits = model(input_ids=x).logits
        loss = torch.nn.functional.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))
    else:
        _, loss = model(x, y)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()
    return time.perf_counter() - t0


def training(hf, ours, cfg: GPTConfig, rounds: int, batch: int, seq: int, steps: int) -> dict:
    """Median step time per round (`steps` steps each), same batch and loss (fp32 cross-entropy of the same
    logits: transformers' labels path shifts inside, so the loss is taken the same way on both sides)."""
    hf.train(), ours.train()
    g = torch.Generator().manual_seed(2)
    x = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    y = torch.randint(0, cfg.vocab_size, (batch, seq), generator=g)
    opts = {k: torch.optim.AdamW(m.parameters(), lr=1e-4) for k, m in (("ours", ours), ("hf", hf))}
    for _ in range(2):  # warm-up: the optimizer's state, first-call allocations
        train_step_s(ours, opts["ours"], x, y, False), train_step_s(hf, opts["hf"], x, y, True)
    a, b = [], []
    for _ in range(rounds):
        a.append(statistics.median(train_step_s(ours, opts["ours"], x, y, False) for _ in range(steps)))
        b.append(statistics.median(train_step_s(hf, opts["hf"], x, y, True) for _ in range(steps)))
    peak = measure_peak_flops()
    row = ratio_row(a, b, higher_is_better=False)
    train_cfg = GPTConfig(**{**cfg.__dict__, "block_size": seq})  # attention FLOPs at the trained length
    fpt = flops_per_token(train_cfg)
    row["mfu_ours"] = fpt * batch * seq / row["ours"] / peak
    row["mfu_theirs"] = fpt * batch * seq / row["theirs"] / peak
    row.update(batch=batch, seq=seq, flops_per_token=fpt, peak_flops=peak)
    return row


def int8(ours, cfg: GPTConfig, rounds: int, prompt_len: int, new: int) -> dict:
    ours.eval()
    comp = SemanticCompressor("auto")
    q = comp.compress_state(ours.state_dict(), cfg)
    g = torch.Generator().manual_seed(3)
    prompts = torch.randint(1, cfg.vocab_size, (16, prompt_len), generator=g).tolist()
    out = {"kernel": comp.kernel, "fp32_bytes": weight_bytes(ours), "int8_bytes": weight_bytes(q)}
    for batch in (1, 16):
        ps = prompts[:batch]
        ours_decode(q, ps, 4), ours_decode(ours, ps, 4)
        a, b = [], []
        for _ in range(rounds):
            a.append(ours_decode(q, ps, new))
            b.append(ours_decode(ours, ps, new))
        out[f"batch{batch}"] = ratio_row(a, b, higher_is_better=True)  # > 1: int8 faster
    return out


def default_shape() -> dict:
    """configs/llama.yaml's model in transformers' names (the vocabulary its tokenizer would have)."""
    from phase2_ray.configure import load_config

    cfg = load_config(Path(__file__).resolve().parent.parent / "configs/llama.yaml")
    m = GPTConfig(**cfg.model.gpt_fields(cfg.data.vocab_size))
    return dict(
        vocab_size=m.vocab_size,
        hidden_size=m.d_model,
        intermediate_size=m.hidden,
        num_hidden_layers=m.n_layer,
        num_attention_heads=m.n_head,
        num_key_value_heads=m.kv_heads,
        max_position_embeddings=m.block_size,
        tie_word_embeddings=m.tie_embeddings,
        rope_theta=m.rope_theta,
        rms_norm_eps=m.norm_eps,
    )


def bench_model(
    shape: dict, rounds: int, prompt: int, new: int, n_mixed: int, train: tuple[int, int]
) -> dict:
    hf, ours, cfg = build(shape)
    return {
        "model": {"transformers": shape, "params": ours.num_params()},
        "decode": decode(hf, ours, cfg, rounds, prompt, new, n_mixed),
        "training": training(
            hf, ours, cfg, rounds, batch=train[0], seq=train[1], steps=3 if rounds < 3 else 8
        ),
        "int8": int8(ours, cfg, rounds, prompt, new),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="a tiny model, 2 rounds: checks the script runs")
    ap.add_argument("--rounds", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--prompt", type=int, default=32, help="prompt tokens (uniform batches)")
    ap.add_argument("--new", type=int, default=64, help="generated tokens per request (uniform batches)")
    ap.add_argument("--mixed", type=int, default=64, help="requests in the mixed-length serving workload")
    ap.add_argument("--out", help="write the JSON summary here")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    t0 = time.time()
    out: dict = {"machine": machine(), "models": {}}
    if args.quick:
        out["models"]["quick"] = bench_model(QUICK, 2, 8, 8, 16, (4, 32))
    else:
        out["models"]["default"] = bench_model(
            default_shape(), args.rounds, args.prompt, args.new, args.mixed, (8, 128)
        )
        out["models"]["bench"] = bench_model(BENCH, args.rounds, args.prompt, args.new, args.mixed, (8, 128))
    out["wall_s"] = time.time() - t0
    first = next(iter(out["models"].values()))
    out["targets"] = [
        {"name": "decode batch 1 vs transformers generate", "min": 1.0, **_t(first["decode"]["batch1"], 1.0)},
        {
            "name": "decode 16 at a time, mixed lengths: continuous batching vs static batch",
            "min": 3.0,
            **_t(first["decode"]["mixed16"], 3.0),
        },
        {"name": "training step vs LlamaForCausalLM", "min": 1.0, **_t(first["training"], 1.0)},
    ]
    print_report(out)
    if args.out:
        Path(args.out).write_text(json.dumps(out, indent=2))
    return 0


def _t(row: dict, target: float) -> dict:
    lo, hi = row["range"]
    met = "met" if lo >= target else "missed" if hi < target else "undecided"
    return {"ratio": row["ratio"], "range": row["range"], "met": met}


def print_report(out: dict) -> None:
    m = out["machine"]
    print(f"machine: {m['cpu']} ({m['torch_cpu_capability']}), torch {m['torch']}, {m['threads']} thread(s)")
    for name, r in out["models"].items():
        print(f"\n== {name} model: {r['model']['params']:,} params, {r['model']['transformers']}")
        d = r["decode"]
        print(
            f"decode, greedy (same tokens as transformers: {d['greedy_tokens_equal']}); uniform batches of "
            f"{d['prompt_tokens']} prompt + {d['new_tokens']} new tokens:"
        )
        for b in ("batch1", "batch16", "mixed16"):
            x = d[b]
            label = f"mixed16 ({x['requests']} requests)" if b == "mixed16" else b
            print(f"  {label}: ours {x['ours']:.1f} tok/s, transformers {x['theirs']:.1f} tok/s: {_x(x)}")
        t = r["training"]
        print(
            f"training step (batch {t['batch']} x {t['seq']}): ours {t['ours'] * 1e3:.1f} ms, LlamaForCausalLM "
            f"{t['theirs'] * 1e3:.1f} ms: {_x(t)}; MFU ours {t['mfu_ours']:.1%}, theirs {t['mfu_theirs']:.1%} "
            f"(peak {t['peak_flops'] / 1e9:.1f} GFLOP/s measured)"
        )
        i = r["int8"]
        print(
            f"int8 ({i['kernel']}) vs fp32 decode: weights {i['int8_bytes'] / 1e6:.2f} MB vs "
            f"{i['fp32_bytes'] / 1e6:.2f} MB"
        )
        for b in ("batch1", "batch16"):
            x = i[b]
            print(f"  {b}: int8 {x['ours']:.1f} tok/s, fp32 {x['theirs']:.1f} tok/s: {_x(x)}")
    print()
    for t in out["targets"]:
        print(
            f"target {t['name']} >= {t['min']}x: {t['ratio']:.2f}x [{t['range'][0]:.2f}, {t['range'][1]:.2f}] "
            f"{t['met']}"
        )
    print(f"wall {out['wall_s']:.0f} s")


def _x(r: dict) -> str:
    return f"{r['ratio']:.2f}x [{r['range'][0]:.2f}, {r['range'][1]:.2f}]"


if __name__ == "__main__":
    sys.exit(main())
