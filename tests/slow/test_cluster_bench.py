"""benchmarks/cluster_bench.py --quick: the benchmark is code, so a refactor of the pipeline, its CLI or its report
cannot break it silently. Quick runs the smoke pipeline, shrunk, one way: embedded (`phase2 run` starting a Ray of
its own beside the session's, with address "local" and a free Serve port). What the run takes is printed, not
asserted; what quick leaves out (the job on a `ray start --head`, the simulated cluster) is in the script's
docstring."""

import json

import pytest

from tests.conftest import benchmark

pytestmark = pytest.mark.ray

STAGES = ["data", "2a", "2b", "speed-trial", "2c", "2d"]


def test_cluster_bench_quick_runs_the_pipeline_embedded(cluster_job, tmp_path, capsys):
    if cluster_job is not None:  # the session's other cluster of its own: not two at once on two cores
        cluster_job.proc.wait(timeout=600)
    cluster_bench = benchmark("cluster_bench")
    out = tmp_path / "cluster.json"
    assert cluster_bench.main(["--quick", "--out", str(out)]) == 0
    stdout = capsys.readouterr().out
    res = json.loads(out.read_text())
    assert res["quick"] is True and list(res["results"]) == ["embedded"]
    r = res["results"]["embedded"]
    # every stage ran; the command's exit code carries the decision (0 approved, 1 rejected)
    assert r["stage_status"] == dict.fromkeys(STAGES, "ok") and r["failure"] is None, r
    assert r["exit_code"] == {"APPROVED": 0, "REJECTED": 1, "INCONCLUSIVE": 4}[r["decision"]], r
    assert r["command_s"] > 0 and r["run_wall_s"] > 0 and set(r["stages_s"]) == set(STAGES)
    # one node; both variants trained, one replica served them, one client sent the requests, no sweep
    assert r["nodes"] == 1 and set(r["training_nodes"]) == {"baseline", "optimized"}
    assert len(r["replica_nodes"]) == 1 and len(r["client_nodes"]) == 1 and r["sweep2_nodes"] == []
    assert set(r["tokens_per_s"]) == {"baseline", "optimized"} and min(r["tokens_per_s"].values()) > 0
    assert set(r["c1_tokens_per_s"]) == {"baseline", "optimized"}  # no int8 copy in quick
    assert min(r["c1_tokens_per_s"].values()) > 0
    assert "embedded         command" in stdout and r["decision"] in stdout
