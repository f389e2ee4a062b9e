"""The `endpoints` section and `phase2 validate`'s checks before Ray starts: each bad endpoint exits 2 with one
line that names it and what is allowed."""

import contextlib
import io

import pytest
import yaml

from phase2_ray import cli
from phase2_ray.config import ConfigError
from phase2_ray.config.endpoints import check_endpoints
from phase2_ray.configure import load_config
from phase2_ray.loadtest.endpoints import token_check

URL = "http://127.0.0.1:9/v1"


def _cfg(**endpoints):
    return load_config(None, [f"endpoints={yaml.safe_dump(endpoints, default_flow_style=True).strip()}"])


def test_an_endpoint_is_a_server_or_self_never_both():
    cfg = _cfg(baseline={"url": URL, "model": "m", "api": "chat"}, cand={"self": "baseline"})
    assert cfg.endpoints["baseline"].base_url == "http://127.0.0.1:9" and cfg.endpoints["baseline"].external
    assert not cfg.endpoints["cand"].external
    with pytest.raises(ConfigError, match="drop url"):
        _cfg(baseline={"self": "baseline", "url": URL})
    with pytest.raises(ConfigError, match="needs `url` and `model`"):
        _cfg(baseline={"url": URL})
    with pytest.raises(ConfigError, match="endpoints.cand.urll: unknown key .*self.*url"):
        _cfg(cand={"urll": URL})
    with pytest.raises(ConfigError, match="endpoints.cand.api"):
        _cfg(cand={"url": URL, "model": "m", "api": "embeddings"})


def test_the_command_decides_what_the_endpoints_must_hold(monkeypatch):
    cfg = _cfg(candidate={"url": URL, "model": "m"})
    with pytest.raises(ValueError, match="needs `baseline` and at least one candidate"):
        check_endpoints(cfg.endpoints, list(cfg.variants), "validate")
    check_endpoints(cfg.endpoints, list(cfg.variants), "run")  # a further candidate beside the trained ones
    clash = _cfg(optimized={"url": URL, "model": "m"})
    with pytest.raises(ValueError, match="give it another name"):
        check_endpoints(clash.endpoints, list(clash.variants), "run")
    bad_self = _cfg(baseline={"url": URL, "model": "m"}, cand={"self": "nope"})
    with pytest.raises(ValueError, match="'nope' is not a variant"):
        check_endpoints(bad_self.endpoints, list(bad_self.variants), "validate")
    monkeypatch.delenv("NO_SUCH_KEY_VAR", raising=False)
    keyed = _cfg(
        baseline={"url": URL, "model": "m", "api_key_env": "NO_SUCH_KEY_VAR"}, c={"url": URL, "model": "m"}
    )
    with pytest.raises(ValueError, match="NO_SUCH_KEY_VAR is not set"):
        check_endpoints(keyed.endpoints, list(keyed.variants), "validate")


def test_validate_exits_2_before_ray_for_a_self_endpoint_without_weights_or_a_missing_tokenizer(tmp_path):
    def run(endpoints: dict) -> tuple[int, str]:
        path = tmp_path / "c.yaml"
        path.write_text(yaml.safe_dump({"endpoints": endpoints}))
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            rc = cli.main(["validate", "-c", str(path), "--output", str(tmp_path / "out")])
        return rc, err.getvalue()

    rc, err = run({"baseline": {"self": "baseline"}, "candidate": {"url": URL, "model": "m"}})
    assert rc == 2 and "model.init_from" in err and "self" in err
    rc, err = run(
        {"baseline": {"url": URL, "model": "m", "tokenizer": "nowhere"}, "c": {"url": URL, "model": "m"}}
    )
    assert rc == 2 and "endpoints.baseline.tokenizer" in err and "no tokenizer.json" in err
    rc, err = run({"baseline": {"url": URL, "model": "m"}, "c": {"url": URL, "model": "m"}})
    assert (
        rc == 2
        and "endpoint 'baseline'" in err
        and "unreachable" in err
        and len(err.strip().splitlines()) == 1
    )


def test_token_check_counts_usage_and_the_retokenized_mismatch(tiny_corpus):
    _, tok, *_ = tiny_corpus
    text = "def main(argv):\n    return 0\n"
    n = len(tok.encode(text).ids)
    recs = [
        {"ok": True, "text": text, "completion_tokens": n, "output_tokens": n, "prompt_tokens": 4},
        {"ok": True, "text": text, "completion_tokens": n + 2, "output_tokens": n + 2, "prompt_tokens": 6},
        {"ok": False, "text": "", "completion_tokens": None, "output_tokens": 0},
    ]
    t = token_check(recs, tok, "tok.json")
    assert (
        t["requests"] == 2 and t["with_usage"] == 2 and t["output_tokens_from"] == "usage.completion_tokens"
    )
    assert t["mismatched"] == 1 and t["mismatch_rate"] == 0.5 and t["mean_abs_diff"] == 1.0
    assert t["prompt_tokens_usage_mean"] == 5.0
    assert token_check(recs, None, None)["mismatch_rate"] is None


def test_the_shipped_validate_config_loads_and_names_what_this_machine_lacks(tmp_path, monkeypatch):
    from tests.conftest import ROOT

    cfg = load_config(ROOT / "configs/validate.yaml")
    assert set(cfg.endpoints) == {"baseline", "candidate"} and cfg.endpoints["candidate"].api == "chat"
    assert "~" not in cfg.endpoints["baseline"].tokenizer  # expanded
    assert cfg.validation.capacity.baseline  # capacity_vs_baseline_min turns the baseline's search on
    monkeypatch.setenv("CANDIDATE_API_KEY", "k")
    with pytest.raises(ValueError, match="endpoints.baseline.tokenizer: .*no tokenizer.json"):
        check_endpoints(cfg.endpoints, list(cfg.variants), "validate")


def test_endpoint_names_and_urls_that_would_mislead_are_refused():
    cfg = _cfg(**{"optimized-int8": {"url": URL, "model": "m"}})
    with pytest.raises(ValueError, match="the name of a copy 2c serves itself"):
        check_endpoints(cfg.endpoints, list(cfg.variants), "run")
    for url in ("http://user:tok@127.0.0.1:9/v1", "http://127.0.0.1:9/v1?key=sk"):
        with pytest.raises(ConfigError, match="endpoints.c.url"):
            _cfg(c={"url": url, "model": "m"})


def test_a_self_endpoint_under_another_name_serves_through_its_variants_serve_hooks():
    from phase2_ray.stacks import serve_plan

    cfg = load_config(None, ["variants.optimized.converters=[int8]", "serve.int8=false"])
    plan = serve_plan(cfg, {"baseline": {}, "optimized": {}, "opt2": {}}, {"opt2": "optimized"})
    assert (
        [c["name"] for c in plan["opt2"]["converters"]]
        == ["int8"]
        == [c["name"] for c in plan["optimized"]["converters"]]
    )
    assert plan["baseline"]["converters"] == []


def test_validate_asks_no_training_resources_of_this_machine():
    from phase2_ray import preflight

    big = ["training.placement.cpus_per_actor=64", "endpoints.baseline.url=http://127.0.0.1:9/v1"]
    cfg = load_config(
        None,
        [*big, "endpoints.baseline.model=m", "endpoints.c.url=http://127.0.0.1:9/v1", "endpoints.c.model=m"],
    )
    preflight.check_before_start(cfg, None, trains=False)  # nothing trains, nothing is served here
    with pytest.raises(ConfigError, match="training.placement.cpus_per_actor=64"):
        preflight.check_before_start(cfg, None)
