import math

from phase2_ray.core.model import GPTConfig
from phase2_ray.core.specs import OptimizationSettings
from phase2_ray.core.train import TrainSettings, lr_at, train


def settings(**kw) -> TrainSettings:
    base = dict(
        steps=30, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=5, eval_interval=10, eval_windows=8
    )
    return TrainSettings(**{**base, **kw})


def model_cfg(tok) -> GPTConfig:
    return GPTConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=1, n_head=2, d_model=16)


def test_loss_falls_and_everything_is_logged(tiny_corpus):
    _, tok, train_ids, val_ids = tiny_corpus
    r, _ = train(model_cfg(tok), settings(), OptimizationSettings(), train_ids, val_ids)
    assert r.status == "ok" and r.steps == 30 and len(r.losses) == len(r.step_times) == 30
    assert r.tokens == 30 * 4 * 32
    assert [s for s, _ in r.val_curve] == [0, 10, 20, 30]
    assert r.val_curve[-1][1] < r.val_curve[0][1]
    assert sum(r.losses[-5:]) < sum(r.losses[:5])


def test_variants_share_init_and_data_order(tiny_corpus):
    _, tok, train_ids, val_ids = tiny_corpus
    a, _ = train(model_cfg(tok), settings(), OptimizationSettings(), train_ids, val_ids)
    b, _ = train(model_cfg(tok), settings(), OptimizationSettings.of(fused_adamw=True), train_ids, val_ids)
    assert a.data_order_sha256 == b.data_order_sha256
    assert a.losses[0] == b.losses[0]  # same weights, same first batch
    assert abs(a.val_curve[-1][1] - b.val_curve[-1][1]) / a.val_curve[-1][1] < 0.01
    assert [c["name"] for c in b.applied] == ["fused_adamw"] and a.applied == []


def test_divergence_stops_at_the_first_non_finite_loss(tiny_corpus):
    _, tok, train_ids, val_ids = tiny_corpus
    r, _ = train(
        model_cfg(tok), settings(lr=1e6, min_lr=1e6, grad_clip=0), OptimizationSettings(), train_ids, val_ids
    )
    assert r.status == "diverged" and "step" in r.error
    assert not math.isfinite(r.losses[-1]) and r.steps == len(r.losses) < 30


def test_lr_schedule_warms_up_then_decays_to_min():
    s = settings(steps=100, warmup_steps=10)
    assert lr_at(0, s) < lr_at(9, s) == s.lr
    assert abs(lr_at(99, s) - s.min_lr) < 1e-4
