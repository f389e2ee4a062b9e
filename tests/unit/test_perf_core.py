"""Measurement building blocks of issue 3: block-bootstrap CI, MFU formula, core split, auto selection, run plan."""

import numpy as np
import pytest
import torch

from phase2_ray.config import VariantConfig
from phase2_ray.configure import load_config
from phase2_ray.core.autotune import REFERENCE, ProbeResult, probe, select_stack
from phase2_ray.core.flops import flops_per_token, measure_peak_flops, non_embedding_params
from phase2_ray.core.model import GPT, GPTConfig
from phase2_ray.core.train import TrainSettings
from phase2_ray.report.stats import block_bootstrap_ratio_ci
from phase2_ray.report.training import convergence
from phase2_ray.stacks import auto_candidates
from phase2_ray.training.placement import CoreAllocator


def test_bootstrap_ci_separates_real_speedups_from_noise():
    rng = np.random.default_rng(1)
    base = rng.normal(50.0, 2.0, 300)
    faster = rng.normal(40.0, 2.0, 300)
    same = rng.normal(50.0, 2.0, 300)
    sp = block_bootstrap_ratio_ci(base, faster)
    assert sp["ratio"] == pytest.approx(np.median(base) / np.median(faster))
    assert 1.2 < sp["ci_low"] <= sp["ratio"] <= sp["ci_high"] < 1.3 and sp["significant"]
    noise = block_bootstrap_ratio_ci(base, same)
    assert noise["ci_low"] < 1.0 < noise["ci_high"] and not noise["significant"]
    slower = block_bootstrap_ratio_ci(faster, base)
    assert slower["significant"] and slower["ci_high"] < 1.0
    assert block_bootstrap_ratio_ci([1.0, 1.0], [1.0, 1.0])["ratio"] is None  # too few to resample blocks


def test_flops_per_token_matches_a_hand_count():
    cfg = GPTConfig(vocab_size=10, block_size=4, n_layer=1, n_head=2, d_model=4)
    # By hand: wte 10*4 = 40; block: 2 LayerNorms 2*(4+4) = 16, qkv 4*12 = 48, proj 16, fc 4*16 = 64,
    # mlp proj 64 -> 208; final LayerNorm 8. N = 40 + 208 + 8 = 256 (the 4*4 position table is left out).
    assert non_embedding_params(cfg) == 256
    # 6N = 1536; attention 12 * L(1) * H(2) * Q(2) * T(4) = 192
    assert flops_per_token(cfg) == 1536 + 192
    big = GPTConfig(vocab_size=300, block_size=32, n_layer=3, n_head=4, d_model=32)
    assert non_embedding_params(big) == GPT(big).num_params() - 32 * 32


def test_peak_flops_is_measured():
    assert 1e8 < measure_peak_flops(torch.float32, size=128, repeats=3) < 1e13


def test_core_allocator_gives_disjoint_sets_and_takes_them_back():
    pool = CoreAllocator([3, 0, 1, 2])
    a, b = pool.acquire(2, "a"), pool.acquire(2, "b")
    assert a == [0, 1] and b == [2, 3] and not set(a) & set(b)
    assert pool.acquire(1, "c") is None
    assert pool.acquire(2, "a") == a  # a restarted actor gets its own cores back, not more
    pool.release("a")
    assert pool.acquire(1, "c") == [0]
    pool.release("never-held")  # ignored
    assert pool.free == [1]


def result(name, ms, loss, blocks=None, settings=None):
    return ProbeResult(
        name=name,
        settings=settings or {},
        median_step_ms=ms,
        first_step_s=0.1,
        mean_loss=loss,
        block_s=blocks if blocks is not None else [ms / 1000 * 3] * 12,
    )


def rounds(ms: float, rng, sd: float = 0.01, n: int = 12) -> list[float]:
    """Block times of n rounds, each round's machine moment shared by every stack (drift), plus own noise."""
    return [ms * d * float(np.exp(rng.normal(0, sd))) for d in DRIFT[:n]]


DRIFT = list(np.exp(np.random.default_rng(0).normal(0, 0.1, 200)))


def test_auto_keeps_a_stack_faster_beyond_noise_that_learns_like_fp32():
    rng = np.random.default_rng(1)
    results = [
        result(REFERENCE, 50.0, 6.00, rounds(50, rng)),
        result("fused", 45.0, 6.01, rounds(45, rng), {"fused_adamw": True}),
        result("fused+bf16", 30.0, 6.30, rounds(30, rng), {"fused_adamw": True, "bf16": True}),  # loss 5% off
        result("compile+fused", 40.0, 6.02, rounds(40, rng), {"compile": True, "fused_adamw": True}),
    ]
    chosen = select_stack(results, tolerance_pct=1.0)
    assert chosen.name == "compile+fused" and chosen.ci_low > 1.0
    assert [r.accepted for r in results] == [True, True, False, True]
    assert results[2].loss_delta_pct == pytest.approx(5.0) and not results[2].faster


def test_auto_prefers_the_simpler_stack_on_a_tie_and_the_reference_within_noise():
    rng = np.random.default_rng(2)
    ref = result(REFERENCE, 50.0, 6.0, rounds(50, rng, sd=0.03))
    fused = result("fused", 40.0, 6.0, rounds(40, rng, sd=0.03), {"fused_adamw": True})
    both = result(
        "compile+fused", 39.6, 6.0, rounds(39.6, rng, sd=0.03), {"compile": True, "fused_adamw": True}
    )
    assert select_stack([ref, fused, both], 1.0).name == "fused"  # 1% apart: a tie, the simpler stack
    ref = result(REFERENCE, 50.0, 6.0, rounds(50, rng, sd=0.05))
    noisy = result("fused", 49.0, 6.0, rounds(49, rng, sd=0.05), {"fused_adamw": True})
    assert select_stack([ref, noisy], 1.0).name == REFERENCE  # 2% within noise: keep the reference


def test_auto_choice_is_stable_over_repeated_probes():
    """A candidate 3% faster, rounds with 1.5% noise of their own and shared drift: the same choice in at least
    9 of 10 probes (the issue's bar), with the 1% noise threshold."""
    rng = np.random.default_rng(3)
    picks = [
        select_stack(
            [
                result(REFERENCE, 50.0, 6.0, rounds(50, rng, 0.015)),
                result("fused", 48.5, 6.0, rounds(48.5, rng, 0.015)),
            ],
            1.0,
            1.0,
        ).name
        for _ in range(10)
    ]
    assert max(picks.count(x) for x in set(picks)) >= 9


def test_auto_falls_back_to_the_reference_and_rejects_nan():
    results = [result(REFERENCE, 50.0, 6.0), result("fused+bf16", 10.0, float("nan"), [0.03] * 12)]
    assert select_stack(results, 1.0).name == REFERENCE and not results[1].accepted


def test_probe_runs_each_candidate_from_the_same_start(tiny_corpus):
    _, tok, train_ids, val_ids = tiny_corpus
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2, d_model=16)
    s = TrainSettings(steps=100, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_windows=4)
    stacks = {
        k: v
        for k, v in auto_candidates(VariantConfig(auto=True, auto_compile=False)).items()
        if k != "fused+bf16"
    }
    out = probe(cfg, s, stacks, train_ids, steps=6, rounds=3, block_steps=2)
    assert [r.name for r in out] == list(stacks)
    assert all(r.median_step_ms > 0 and len(r.block_s) == 3 for r in out)
    # same init and batches: eager fp32 and fused AdamW learn the same to float precision
    assert out[1].mean_loss == pytest.approx(out[0].mean_loss, rel=1e-4)


def test_convergence_tolerance_from_seed_variance():
    base = [{"val_loss": x} for x in (5.00, 5.10, 4.90)]
    opt = [{"val_loss": x} for x in (5.05, 5.02, 4.99)]
    c = convergence(base, opt, fixed_tol_pct=1.0)
    assert c["val_loss_tolerance_pct"] == pytest.approx(2 * 0.1 / 5.0 * 100)  # 2 sigma of the baseline seeds
    assert c["val_loss_delta_pct"] == pytest.approx(abs(np.mean([5.05, 5.02, 4.99]) - 5.0) / 5.0 * 100)
    one = convergence(base[:1], opt[:1], fixed_tol_pct=1.0)
    assert one["val_loss_tolerance_pct"] == 1.0 and one["val_loss_seeds"] == 1


def test_run_plan_for_isolation_and_repeats():
    from phase2_ray.training.run import plan_training

    together, alone = plan_training(
        load_config(None, ["training.measurement.isolation=both", "training.measurement.repeats=2"])
    )
    assert [(j.variant, j.seed, j.primary) for j in together] == [
        ("baseline", 1337, True),
        ("optimized", 1337, True),
        ("baseline", 1338, False),
        ("optimized", 1338, False),
    ]
    assert [(j.variant, j.phase, j.primary) for j in alone] == [
        ("baseline", "isolated", False),
        ("optimized", "isolated", False),
    ]
    together, alone = plan_training(load_config(None, ["training.measurement.isolation=sequential"]))
    assert not together and [j.stage_name() for j in alone] == ["2a", "2b"]


def test_ablation_expands_variants():
    cfg = load_config(None, ["ablation=true"])
    assert list(cfg.variants) == ["baseline", "compile", "fused_adamw", "bf16", "sdpa_math", "all"]
    assert cfg.variants["all"].compile and cfg.variants["all"].bf16 and cfg.variants["all"].fused_adamw


def test_core_rotation_moves_all_actors_together():
    from phase2_ray.training.placement import CoreRotation

    slots = [[0], [1]]
    a, b = CoreRotation(slots, 0, 5.0), CoreRotation(slots, 1, 5.0)
    for t in (0.0, 4.9, 5.0, 12.0):
        assert a.slot_at(t) != b.slot_at(t)  # never the same core at the same moment
    assert a.slot_at(0.0) == [0] and a.slot_at(5.0) == [1] and a.slot_at(10.0) == [0]


def test_core_rotation_books_time_per_core(monkeypatch):
    import phase2_ray.training.placement as placement

    pinned = []
    monkeypatch.setattr(placement, "pin_all_threads", pinned.append)
    r = placement.CoreRotation([[0], [1]], 0, 5.0)
    for t in (1.0, 3.0, 6.0, 9.0, 11.0):
        r.tick(t)
    assert pinned == [[0], [1], [0]] and r.switches == 2
    assert r.seconds_on == {"0": 2.0 + 3.0, "1": 3.0 + 2.0}


def test_rotation_plan_only_when_all_jobs_fit():
    from phase2_ray.training.placement import rotation_plan

    plan = rotation_plan([0, 1, 2, 3], 2, 2, 5.0)
    assert [p["slots"] for p in plan] == [[[0, 1], [2, 3]]] * 2 and [p["index"] for p in plan] == [0, 1]
    assert rotation_plan([0, 1], 1, 3, 5.0) is None  # three actors on two cores: the pool pins them instead
    assert rotation_plan([0, 1], 1, 2, 0.0) is None  # rotation off


def test_the_helper_actors_module_imports_no_torch():
    """The core pool, start barrier and state store each run in a process of their own: importing torch there
    costs every run seconds of CPU on the cores the training actors measure on."""
    import subprocess
    import sys

    code = "import sys, phase2_ray.training.coordination; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
