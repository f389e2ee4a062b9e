"""Generated references stay current: docs/configuration.md is what the config models print
(`python -m phase2_ray.config.reference > docs/configuration.md` after changing a Field)."""

from pathlib import Path

from phase2_ray.config import reference

ROOT = Path(__file__).resolve().parents[2]


def test_the_configuration_reference_is_current():
    assert (ROOT / "docs/configuration.md").read_text() == reference.render(), (
        "docs/configuration.md is stale: run .venv/bin/python -m phase2_ray.config.reference > docs/configuration.md"
    )


def test_every_config_key_is_documented():
    """No key without a description: the reference (and the error messages) would have nothing to say."""
    text = reference.render()
    rows = [line for line in text.splitlines() if line.startswith("| `")]
    assert rows and all(not line.rstrip().endswith("|  |") for line in rows), [
        line.split("|")[1] for line in rows if line.rstrip().endswith("|  |")
    ]
