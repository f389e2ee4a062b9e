"""Corpus selection, BPE tokenizer training and a deterministic batch schedule shared by every variant."""

from __future__ import annotations

import glob
import hashlib
import os
import sysconfig
from dataclasses import dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

SPECIAL_TOKENS = ["<|endoftext|>"]
# Directories of the standard library that are not its own source: installed packages and generated caches.
_STDLIB_SKIP = {"site-packages", "dist-packages", "__pycache__", "test", "tests", "idle_test"}


def stdlib_files() -> list[Path]:
    """The Python standard library's own .py files: real text that every machine with Python has."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for folder, subfolders, names in os.walk(root):
        # pruned, not filtered afterwards: the base Python's site-packages can hold thousands of files
        subfolders[:] = [d for d in subfolders if d not in _STDLIB_SKIP]
        files += [Path(folder) / n for n in names if n.endswith(".py")]
    # Hash order mixes modules from the whole library instead of the alphabet's first letters,
    # and stays the same on every machine with the same stdlib.
    return sorted(files, key=lambda p: hashlib.sha1(str(p.relative_to(root)).encode()).hexdigest())


def resolve_paths(paths: list[str], base: Path | None = None) -> list[Path]:
    """Files named by `paths` (files, folders searched recursively, or globs), sorted, duplicates dropped."""
    base = base or Path.cwd()
    out: list[Path] = []
    for raw in paths:
        p = Path(raw).expanduser()
        p = p if p.is_absolute() else base / p
        if p.is_file():
            found = [p]
        elif p.is_dir():
            found = sorted(f for f in p.rglob("*") if f.is_file())
        else:
            found = sorted(Path(f) for f in glob.glob(str(p), recursive=True) if Path(f).is_file())
        if not found:
            raise FileNotFoundError(f"data.paths entry {raw!r} matches no readable file")
        out.extend(found)
    return list(dict.fromkeys(out))


@dataclass
class Corpus:
    train_text: str
    val_text: str
    files: list[str]

    @property
    def chars(self) -> int:
        return len(self.train_text) + len(self.val_text)


def load_corpus(files: list[Path], max_chars: int, val_fraction: float) -> Corpus:
    """Reads UTF-8 files in the given order up to `max_chars`, then holds out the last `val_fraction` as val.

    Files that are not UTF-8 text are skipped, so a folder with a stray binary still works."""
    parts: list[str] = []
    used: list[str] = []
    total = 0
    for f in files:
        if total >= max_chars:
            break
        try:
            text = f.read_text(encoding="utf-8")
        except (UnicodeDecodeError, OSError):
            continue
        if not text.strip():
            continue
        text = text[: max_chars - total]
        parts.append(text)
        used.append(str(f))
        total += len(text) + 2
    full = "\n\n".join(parts)
    if len(full) < 1000:
        raise ValueError(f"corpus holds {len(full)} characters of text; at least 1000 are needed")
    cut = int(len(full) * (1 - val_fraction))
    # Cut at a line end so no token straddles the split.
    nl = full.rfind("\n", 0, cut)
    cut = nl + 1 if nl > 0 else cut
    return Corpus(train_text=full[:cut], val_text=full[cut:], files=used)


def train_tokenizer(text: str, vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on `text` (the train split only, so val stays unseen)."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_chunks(text), trainer=trainer)
    return tok


def encode(tok: Tokenizer, text: str) -> torch.Tensor:
    """Token ids of `text` as one int32 tensor (encoded in line batches so the library can parallelise)."""
    ids: list[int] = []
    for enc in tok.encode_batch(list(_chunks(text))):
        ids.extend(enc.ids)
    return torch.tensor(ids, dtype=torch.int32)


def _chunks(text: str, size: int = 1 << 14):
    # Split at line ends so a chunk boundary never cuts a word the pre-tokenizer would have kept whole.
    start = 0
    while start < len(text):
        end = text.find("\n", start + size)
        end = len(text) if end < 0 else end + 1
        yield text[start:end]
        start = end


def batch_schedule(n_tokens: int, block_size: int, batch_size: int, steps: int, seed: int) -> torch.Tensor:
    """Start offsets [steps, batch_size] of every training window: the data order, identical for all variants."""
    if n_tokens <= block_size + 1:
        raise ValueError(f"{n_tokens} training tokens cannot fill one block of {block_size}")
    gen = torch.Generator().manual_seed(seed)
    return torch.randint(0, n_tokens - block_size - 1, (steps, batch_size), generator=gen)


def get_batch(
    tokens: torch.Tensor, offsets: torch.Tensor, block_size: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs and next-token targets for the windows starting at `offsets`."""
    idx = offsets[:, None] + torch.arange(block_size + 1)
    chunk = tokens[idx].long()
    return chunk[:, :-1], chunk[:, 1:]


def val_offsets(n_tokens: int, block_size: int, max_windows: int) -> torch.Tensor:
    """Evenly spaced, non-overlapping windows over the val split (fixed, so every eval sees the same text)."""
    n = min(max_windows, (n_tokens - 1) // block_size)
    if n < 1:
        raise ValueError(f"{n_tokens} val tokens cannot fill one block of {block_size}")
    stride = (n_tokens - 1 - block_size) // max(n - 1, 1) if n > 1 else 0
    return torch.arange(n) * stride
