"""The config tree's building block: every section forbids unknown keys and coerces nothing."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class ConfigError(ValueError):
    """A config file, override or value that cannot run; the message names the field and what is allowed."""


class Section(BaseModel):
    # Unknown keys are typos until proven otherwise; strict types stop "10" silently becoming 10.
    model_config = ConfigDict(extra="forbid", strict=True, validate_default=True)
