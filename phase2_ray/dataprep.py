"""The run's data, prepared on the driver before Ray starts (a bad corpus is a config error, not a failed stage):
corpus, a tokenizer trained on the train split only, token ids, and validation prompts cut from held-out text."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from phase2_ray.config import Config, ConfigError
from phase2_ray.core import data as corpus_data
from phase2_ray.pretrained import InitWeights, load_init
from phase2_ray.records import Stage
from phase2_ray.workload import Workload, WorkloadError, build_workload


@dataclass
class PreparedData:
    train_tokens: torch.Tensor
    val_tokens: torch.Tensor
    tokenizer_json: str
    vocab_size: int
    prompts: list[str]
    files: list[str]
    chars: int
    stage: Stage
    workload: Workload | None = None
    """The request mix when validation.workload is set; else every request is one of `prompts`."""
    init: InitWeights | None = None
    """model.init_from's weights (both variants start from them) and what they are; None: a seeded init."""

    @property
    def requests(self) -> list:
        """What the load clients send: (prompt, max_tokens) pairs, or prompts asking validation.max_tokens."""
        return self.workload.requests if self.workload else self.prompts


def prepare_data(cfg: Config, prompt_tokenizer=None) -> PreparedData:
    """Corpus, tokenizer (train split only), token ids and validation prompts. Raises ConfigError on bad input.

    `prompt_tokenizer` (phase2 validate: an endpoint's own tokenizer): prompts and the workload are sized in its
    tokens instead of the model's."""
    st = Stage("data", None, start=time.time())
    init = load_init(cfg)  # model.init_from's weights and tokenizer (then none is trained here); errors first
    try:
        files = corpus_data.resolve_paths(cfg.data.paths) if cfg.data.paths else corpus_data.stdlib_files()
        corpus = corpus_data.load_corpus(files, cfg.data.max_chars, cfg.data.val_fraction)
    except (FileNotFoundError, ValueError) as e:
        raise ConfigError(f"data.paths: {e}") from e
    tok = init.tokenizer if init else corpus_data.train_tokenizer(corpus.train_text, cfg.data.vocab_size)
    train_ids = corpus_data.encode(tok, corpus.train_text)
    val_ids = corpus_data.encode(tok, corpus.val_text)
    need = cfg.model.block_size + 2
    for name, ids in (("train", train_ids), ("val", val_ids)):
        if len(ids) < need:
            raise ConfigError(
                f"data: the {name} split has {len(ids)} tokens, fewer than model.block_size + 2 = {need}; "
                "give more text (data.max_chars, data.paths) or lower data.val_fraction"
            )
    ptok = prompt_tokenizer or tok
    pval = corpus_data.encode(ptok, corpus.val_text) if prompt_tokenizer else val_ids
    prompts = validation_prompts(ptok, pval, cfg.validation.prompt_tokens, 16)
    work = None
    if cfg.validation.workload:
        v = cfg.validation
        try:
            work = build_workload(
                v.workload,
                ptok,
                pval.tolist(),
                block_size=cfg.model.block_size if cfg.serves_own() else 1 << 30,
                default_prompt_tokens=v.prompt_tokens,
                default_max_tokens=v.max_tokens,
                seed=cfg.training.seed,
            )
        except WorkloadError as e:
            raise ConfigError(str(e)) from e
    st.status, st.end = "ok", time.time()
    st.detail = f"{corpus.chars} chars from {len(corpus.files)} files; {len(train_ids)}+{len(val_ids)} tokens"
    if init:
        st.detail += f"; weights and tokenizer from {init.info['path']}"
    if prompt_tokenizer:
        st.detail += "; prompts sized with the baseline endpoint's tokenizer"
    # The embedding's rows: a checkpoint's may exceed its tokenizer's size (padded vocabularies).
    vocab = init.info["model"]["vocab_size"] if init else tok.get_vocab_size()
    return PreparedData(
        train_ids, val_ids, tok.to_str(), vocab, prompts, corpus.files, corpus.chars, st, work, init
    )


def validation_prompts(tok, val_ids: torch.Tensor, prompt_tokens: int, count: int) -> list[str]:
    """Held-out text cut into prompts; kept only if they re-encode within `prompt_tokens` tokens."""
    span = len(val_ids) - prompt_tokens
    prompts = []
    for i in range(count):
        off = span * i // count
        text = tok.decode(val_ids[off : off + prompt_tokens].tolist())
        if 0 < len(tok.encode(text).ids) <= prompt_tokens and text.strip():
            prompts.append(text)
    if not prompts:
        raise ConfigError("validation.prompt_tokens: no usable prompt could be cut from the val split")
    return prompts
