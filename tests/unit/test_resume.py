"""Training survives a crash, core part: the whole training state saved every K steps restores bit-identically (no
Ray). The killed training actor is tests/slow/test_resume.py."""

import pytest
import torch

from phase2_ray.core.model import GPTConfig
from phase2_ray.core.specs import OptimizationSettings
from phase2_ray.core.train import TrainSettings, train


@pytest.mark.parametrize("optim", [OptimizationSettings(), OptimizationSettings.of(fused_adamw=True)])
def test_resumed_core_run_is_bit_identical(tiny_corpus, optim, kill_rng):
    _, tok, tr_ids, va = tiny_corpus
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2, d_model=32)
    ts = TrainSettings(
        steps=40, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=10, eval_windows=8
    )
    saved = {}
    full, full_model = train(
        cfg, ts, optim, tr_ids, va, checkpoint_every=10, on_checkpoint=lambda s, f: saved.update({s: f})
    )
    assert sorted(saved) == [10, 20, 30]  # not at the last step: the result itself is the final state
    at = kill_rng.choice(sorted(saved))
    res, res_model = train(cfg, ts, optim, tr_ids, va, resume=saved[at])
    assert res.resumed_from_step == at and res.steps == 40
    assert res.losses == full.losses and res.val_curve == full.val_curve
    a, b = full_model.state_dict(), res_model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)
