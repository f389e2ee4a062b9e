import pytest
import torch

from phase2_ray.core.generate import BatchDecoder, stream_tokens
from phase2_ray.core.model import GPT, GPTConfig
from phase2_ray.core.sampling import SamplingParams, sample


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, d_model=16)).eval()


def greedy_reference(m: GPT, prompt: list[int], n: int) -> list[int]:
    seq = list(prompt)
    with torch.no_grad():
        for _ in range(n):
            seq.append(int(m(torch.tensor([seq]))[0][0, -1].argmax()))
    return seq[len(prompt) :]


def test_decode_step_logits_match_full_forward():
    m = tiny()
    seq = torch.randint(0, 97, (12,)).tolist()
    dec = BatchDecoder(m, 2)
    with torch.no_grad():
        full = m(torch.tensor([seq]))[0][0]
        assert torch.allclose(dec._prefill(torch.tensor([seq[:5]]), 0), full[4], atol=1e-5)
        for p in range(5, 12):
            logits = dec._decode(torch.tensor([seq[p]]), [p])
            assert torch.allclose(logits[0], full[p], atol=1e-5)


def test_continuous_batching_matches_one_at_a_time():
    """Sequences joining and leaving mid-batch (different lengths, positions and slots) decode exactly as alone."""
    m = tiny()
    prompts = [[1, 2, 3], [4, 5, 6, 7, 8, 9], [10], [11, 12], [13, 14, 15, 16]]
    lengths = [9, 4, 12, 1, 6]
    dec = BatchDecoder(m, 3)
    pending = list(zip(prompts, lengths, strict=True))
    seqs = []
    while pending or dec.active:
        while pending and dec.free_slots:
            p, n = pending.pop(0)
            seqs.append(dec.add(p, SamplingParams(n, temperature=0.0)))
        dec.step()
    assert dec.active == []
    for s, p, n in zip(seqs, prompts, lengths, strict=True):
        assert s.tokens == greedy_reference(m, p, n)


def test_sampling_is_seeded_and_batch_independent():
    m = tiny()
    params = dict(temperature=1.0, top_k=20, seed=7)
    alone = list(stream_tokens(m, [5, 6], 10, **params))
    assert alone == list(stream_tokens(m, [5, 6], 10, **params)) and len(alone) == 10
    dec = BatchDecoder(m, 2)
    other = dec.add([9, 9, 9], SamplingParams(10, 1.0, seed=1))
    seq = dec.add([5, 6], SamplingParams(10, **params))
    while dec.active:
        dec.step()
    assert seq.tokens == alone and len(other.tokens) == 10


def test_top_k_and_top_p_restrict_the_candidates():
    gen = torch.Generator().manual_seed(0)
    logits = torch.tensor([5.0, 4.9, 0.0, -1.0, -2.0])
    assert {sample(logits, SamplingParams(1, 1.0, top_k=2), gen) for _ in range(200)} == {0, 1}
    # p(0) ~ 0.52 < 0.6, so nucleus 0.6 keeps tokens 0 and 1 only.
    assert {sample(logits, SamplingParams(1, 1.0, top_p=0.6), gen) for _ in range(200)} == {0, 1}
    assert {sample(logits, SamplingParams(1, 1.0, top_p=0.1), gen) for _ in range(50)} == {0}
    assert sample(logits, SamplingParams(1, 0.0), gen) == 0


def test_sampling_follows_the_distribution():
    gen = torch.Generator().manual_seed(1)
    probs = torch.tensor([0.5, 0.3, 0.2])
    draws = [sample(probs.log(), SamplingParams(1, 1.0), gen) for _ in range(3000)]
    freq = torch.bincount(torch.tensor(draws), minlength=3).float() / len(draws)
    assert torch.allclose(freq, probs, atol=0.03)


@pytest.mark.parametrize(
    "params, match",
    [
        (SamplingParams(0), "max_tokens"),
        (SamplingParams(4, temperature=2.5), "temperature"),
        (SamplingParams(4, top_p=0.0), "top_p"),
        (SamplingParams(4, top_k=0), "top_k"),
        (SamplingParams(30), "context"),
    ],
)
def test_bad_requests_are_refused_before_any_work(params, match):
    dec = BatchDecoder(tiny(), 1)
    with pytest.raises(ValueError, match=match):
        dec.add([1, 2, 3], params)
    assert dec.active == [] and dec.free_slots == 1


def test_full_pool_refuses_more():
    dec = BatchDecoder(tiny(), 1)
    dec.add([1], SamplingParams(5, 0.0))
    with pytest.raises(RuntimeError, match="free cache slot"):
        dec.add([2], SamplingParams(5, 0.0))
    assert dec.cache_bytes == 2 * 2 * 1 * 2 * 32 * 8 * 4


@pytest.mark.parametrize("params", [dict(temperature=0.8, top_k=20), dict(temperature=1.0, top_p=0.9), {}])
def test_rows_sampled_together_draw_what_they_draw_alone(params):
    """Same settings, different seeds: the batch path (one op per group) gives each row its solo tokens."""
    m = tiny()
    prompts = [[1, 2], [3], [4, 5, 6], [7]]
    alone = [list(stream_tokens(m, p, 12, seed=i, **params)) for i, p in enumerate(prompts)]
    dec = BatchDecoder(m, 4)
    seqs = [dec.add(p, SamplingParams(12, seed=i, **params)) for i, p in enumerate(prompts)]
    while dec.active:
        dec.step()
    assert [s.tokens for s in seqs] == alone
