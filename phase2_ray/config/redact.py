"""What of a config may be written down: report.json, config.json, logs and MLflow receive the config without its
secrets. Here, in the config layer, so that every stage that records the config (training, validation, the report)
takes it from below instead of from the report."""

from __future__ import annotations

import re


def public_uri(uri: str) -> str:
    """The URI, or a text quoting one (an error's), without user:password: it lands in report.json, config.json
    and logs. MLFLOW_TRACKING_USERNAME and MLFLOW_TRACKING_PASSWORD give credentials that are never written down."""
    return re.sub(r"(://)[^/@\s]*@", r"\1", uri)


def redacted_config(config: dict) -> dict:
    """The config as recorded in report.json, without secrets (an API key must not land in artifacts)."""
    if config.get("serve", {}).get("api_key"):
        config["serve"]["api_key"] = "<redacted>"
    uri = config.get("tracking", {}).get("mlflow_uri")
    if uri:
        config["tracking"]["mlflow_uri"] = public_uri(uri)  # no user:password in artifacts
    return config
