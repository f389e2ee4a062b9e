"""`endpoints`: OpenAI-compatible servers judged as baseline or candidate, beside (phase2 run) or instead of
(phase2 validate) the run's own Serve deployment."""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Literal

from pydantic import ConfigDict, Field, model_validator

from phase2_ray.config.base import Section

ENV_NAME = r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"


class EndpointConfig(Section):
    """One endpoint: a server given by its base URL and model name, or `self: VARIANT`, the run's own Serve
    deployment of that variant's checkpoint."""

    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True, populate_by_name=True)

    url: str | None = Field(
        None,
        pattern=r"^https?://[^\s/@?#]+(/[^\s?#]*)?$",
        description="Base URL as an OpenAI client takes it (http://host:port/v1); requests go to "
        "URL/completions or URL/chat/completions. No user:password@ or ?query: credentials come from "
        "api_key_env only (a URL is written to the report).",
    )
    model: str | None = Field(None, min_length=1, description="The model name the server serves (its id).")
    api: Literal["completions", "chat"] = Field(
        "completions", description="Which API the load generator drives on this endpoint."
    )
    tokenizer: str | None = Field(
        None,
        min_length=1,
        description="The endpoint's tokenizer: a tokenizer.json file or a directory holding one (an export, a "
        "Hugging Face model directory). Prompts are sized with the baseline's, and each answer is re-tokenized "
        "to check the server's usage counts. Relative paths are relative to the config file.",
    )
    api_key_env: str | None = Field(
        None,
        pattern=ENV_NAME,
        description="Name of the environment variable holding the API key (keys are read only from the "
        "environment, and never written to the report, logs or MLflow).",
    )
    self_: str | None = Field(
        None,
        alias="self",
        min_length=1,
        description="Instead of url/model: the run's own Serve deployment of this variant's checkpoint "
        "(phase2 validate, which trains nothing, serves model.init_from's weights).",
    )

    @model_validator(mode="after")
    def _one_kind(self) -> EndpointConfig:
        if self.self_ is not None:
            extra = [k for k in ("url", "model", "tokenizer", "api_key_env") if getattr(self, k) is not None]
            if extra:
                raise ValueError(f"`self` is the run's own deployment: drop {', '.join(extra)}")
        elif self.url is None or self.model is None:
            raise ValueError("an endpoint needs `url` and `model` (or `self: VARIANT`)")
        return self

    @property
    def external(self) -> bool:
        return self.self_ is None

    @property
    def base_url(self) -> str:
        """The server's root (the client appends /v1/...): the url without a trailing /v1."""
        url = (self.url or "").rstrip("/")
        return url[: -len("/v1")] if url.endswith("/v1") else url

    def api_key(self) -> str | None:
        """The key, from the environment only (None when unset or not configured)."""
        return os.environ.get(self.api_key_env) if self.api_key_env else None

    def describe(self) -> dict:
        """What report.json records of the endpoint: never the key, only the name of its variable."""
        if not self.external:
            return {"kind": "self", "variant": self.self_, "api": self.api}
        return {
            "kind": "external",
            "url": self.url,
            "model": self.model,
            "api": self.api,
            "tokenizer": self.tokenizer,
            "api_key_env": self.api_key_env,
        }


def tokenizer_file(path: str) -> Path:
    """The tokenizer.json of `path` (the file itself, or a directory holding one); raises ValueError."""
    p = Path(path)
    f = p / "tokenizer.json" if p.is_dir() else p
    if not f.is_file():
        raise ValueError(
            f"{path}: no tokenizer.json there (give a tokenizer.json file or a directory holding one)"
        )
    return f


def check_endpoints(endpoints: dict[str, EndpointConfig], variants: list[str], command: str) -> None:
    """The checks that depend on the command; raises ValueError naming the endpoint.

    phase2 validate: `baseline` and at least one candidate. phase2 run: the baseline is the trained one, so the
    endpoints are further candidates (their names must not be a variant's)."""
    reserved = {v + "-int8" for v in variants} | {"baseline-aa"}  # copies 2c makes under these names
    for name, e in endpoints.items():
        if not re.match(r"^[a-z][a-z0-9_-]{0,31}$", name):
            raise ValueError(f"endpoints.{name}: names must match ^[a-z][a-z0-9_-]{{0,31}}$")
        if name in reserved:
            raise ValueError(
                f"endpoints.{name}: the name of a copy 2c serves itself; give the endpoint another"
            )
        if e.self_ is not None and e.self_ not in variants:
            raise ValueError(f"endpoints.{name}.self: {e.self_!r} is not a variant (variants: {variants})")
        if e.tokenizer is not None:
            try:
                tokenizer_file(e.tokenizer)
            except ValueError as err:
                raise ValueError(f"endpoints.{name}.tokenizer: {err}") from None
        if e.api_key_env and not os.environ.get(e.api_key_env):
            raise ValueError(
                f"endpoints.{name}.api_key_env: the environment variable {e.api_key_env} is not set "
                "(keys are read only from the environment)"
            )
    if command == "validate":
        if "baseline" not in endpoints or len(endpoints) < 2:
            raise ValueError(
                "endpoints: phase2 validate needs `baseline` and at least one candidate endpoint "
                f"(got {sorted(endpoints) or 'none'})"
            )
    else:
        clash = sorted(n for n in endpoints if n in variants)
        if clash:
            raise ValueError(
                f"endpoints {clash}: phase2 run serves its variants under their own names; an endpoint is a "
                "further candidate judged against the trained baseline: give it another name"
            )
