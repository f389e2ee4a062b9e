import asyncio

import pytest
import torch

from phase2_ray.core.engine import AsyncBatchEngine, IncrementalDetokenizer, Overloaded
from phase2_ray.core.generate import SamplingParams, stream_tokens
from phase2_ray.core.model import GPT, GPTConfig


def tiny() -> GPT:
    torch.manual_seed(0)
    return GPT(GPTConfig(vocab_size=97, block_size=32, n_layer=2, n_head=2, d_model=16)).eval()


async def collect(engine, prompt, params) -> list[int]:
    out = []
    async for tokens in engine.generate(prompt, params):
        out += tokens
    return out


def test_concurrent_requests_share_steps_and_match_alone():
    m = tiny()
    prompts = [[1, 2], [3, 4, 5], [6], [7, 8, 9, 10], [11]]

    async def main():
        engine = AsyncBatchEngine(m, max_batch=3, max_waiting=8)
        outs = await asyncio.gather(*(collect(engine, p, SamplingParams(10, 0.0)) for p in prompts))
        return engine, outs

    engine, outs = asyncio.run(main())
    assert outs == [list(stream_tokens(m, p, 10, temperature=0)) for p in prompts]
    st = engine.stats()
    assert st["max_batch_seen"] == 3 and st["mean_batch"] > 1.5


def test_full_queue_raises_overloaded_and_bad_input_raises_value_error():
    m = tiny()

    async def main():
        engine = AsyncBatchEngine(m, max_batch=1, max_waiting=1)
        first = asyncio.create_task(collect(engine, [1], SamplingParams(30, 0.0)))
        while not engine.decoder.active:  # the first holds the only slot
            await asyncio.sleep(0.001)
        second = asyncio.create_task(collect(engine, [2], SamplingParams(5, 0.0)))  # waits
        await asyncio.sleep(0)
        with pytest.raises(Overloaded):
            await collect(engine, [3], SamplingParams(5, 0.0))
        with pytest.raises(ValueError, match="context"):
            await collect(engine, [1] * 30, SamplingParams(5, 0.0))
        return await first, await second

    a, b = asyncio.run(main())
    assert len(a) == 30 and len(b) == 5


def test_a_burst_that_fits_slots_plus_queue_is_accepted():
    """Seven requests arrive before the decode loop first runs: the four free slots count, so six are accepted
    (4 slots + 2 waiting) and only the seventh is refused."""
    m = tiny()

    async def main():
        engine = AsyncBatchEngine(m, max_batch=4, max_waiting=2)
        tasks = [asyncio.create_task(collect(engine, [i + 1], SamplingParams(3, 0.0))) for i in range(7)]
        return await asyncio.gather(*tasks, return_exceptions=True)

    out = asyncio.run(main())
    assert [len(x) for x in out[:6]] == [3] * 6 and isinstance(out[6], Overloaded)


def test_a_client_that_leaves_frees_its_slot():
    m = tiny()

    async def main():
        engine = AsyncBatchEngine(m, max_batch=1, max_waiting=4)
        gen = engine.generate([1], SamplingParams(25, 0.0))
        await gen.__anext__()
        await gen.aclose()  # what Starlette does when the HTTP client disconnects
        # the only slot is free again: a new request completes instead of waiting behind 24 more steps
        out = await asyncio.wait_for(collect(engine, [2], SamplingParams(3, 0.0)), timeout=5)
        return engine, out

    engine, out = asyncio.run(main())
    assert len(out) == 3 and engine.decoder.active == []


def test_incremental_detokenizer_holds_back_partial_characters(tiny_corpus):
    _, tok, *_ = tiny_corpus
    text = "naïve café — 東京"
    ids = tok.encode(text).ids
    d = IncrementalDetokenizer(tok)
    pieces = [d.push(t) for t in ids]
    assert "".join(pieces) == tok.decode(ids)
    assert not any("\ufffd" in p for p in pieces)


def test_an_output_ending_inside_a_character_is_flushed_as_decode_renders_it(tiny_corpus):
    """Held-back bytes are not lost at the end: the whole text equals the tokenizer's decode of every id."""
    _, tok, *_ = tiny_corpus
    cut = tok.encode("東京").ids[:-1]  # byte-level tokens: the last character's final byte left out
    d = IncrementalDetokenizer(tok)
    text = "".join(d.push(t) for t in cut)
    assert "\ufffd" not in text
    assert text + d.flush() == tok.decode(cut) and tok.decode(cut).endswith("\ufffd")
    assert d.flush() == ""  # nothing twice
