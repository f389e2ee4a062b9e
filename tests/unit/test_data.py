import pytest
import torch

from phase2_ray.core import data


def test_stdlib_selection_is_deterministic_and_real_text():
    a, b = data.stdlib_files(), data.stdlib_files()
    assert a == b and len(a) > 100
    assert all(p.suffix == ".py" and "site-packages" not in p.parts for p in a)


def test_corpus_split_holds_out_the_tail(tiny_corpus):
    corpus, *_ = tiny_corpus
    assert 0.05 < len(corpus.val_text) / corpus.chars < 0.15
    assert corpus.train_text.endswith("\n")  # cut at a line end


def test_tokenizer_round_trip(tiny_corpus):
    corpus, tok, train, val = tiny_corpus
    text = corpus.val_text[:500]
    assert tok.decode(tok.encode(text).ids) == text
    assert tok.get_vocab_size() <= 400
    assert train.dtype == torch.int32 and int(train.max()) < tok.get_vocab_size()


def test_batch_schedule_is_the_same_for_the_same_seed():
    a = data.batch_schedule(10_000, 32, 4, 20, seed=3)
    b = data.batch_schedule(10_000, 32, 4, 20, seed=3)
    c = data.batch_schedule(10_000, 32, 4, 20, seed=4)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert int(a.max()) < 10_000 - 33


def test_get_batch_targets_are_inputs_shifted():
    tokens = torch.arange(100, dtype=torch.int32)
    x, y = data.get_batch(tokens, torch.tensor([0, 50]), 8)
    assert x.shape == (2, 8) and torch.equal(y, x + 1)


def test_resolve_paths_files_folders_globs(tmp_path):
    (tmp_path / "a.txt").write_text("hello\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "b.md").write_text("world\n")
    assert len(data.resolve_paths([str(tmp_path)])) == 2
    assert [p.name for p in data.resolve_paths([str(tmp_path / "**/*.md")])] == ["b.md"]
    with pytest.raises(FileNotFoundError, match="nothing-here"):
        data.resolve_paths([str(tmp_path / "nothing-here")])


def test_too_little_text_is_refused(tmp_path):
    (tmp_path / "a.txt").write_text("tiny")
    with pytest.raises(ValueError, match="at least 1000"):
        data.load_corpus([tmp_path / "a.txt"], 10_000, 0.1)
