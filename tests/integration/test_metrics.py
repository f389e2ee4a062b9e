"""The training telemetry's live gauges on the node's metrics endpoint (needs the session's Ray cluster)."""

import pytest

pytestmark = pytest.mark.ray


def test_live_training_gauges_are_exported_while_the_actor_runs(ray_cluster):
    """Loss and tokens/s gauges are visible on the metrics endpoint while the recording actor lives."""
    import time

    import httpx
    import ray

    from phase2_ray.telemetry import TrainTelemetry

    @ray.remote(num_cpus=0)
    class Trainer:
        def steps(self, n: int) -> None:
            t = TrainTelemetry("gauge-test", "v", "v", n, 1024, progress="off")
            for i in range(n):
                t.step(i + 1, 4.0 - 0.1 * i, 0.02)

    actor = Trainer.remote()
    ray.get(actor.steps.remote(5))
    port = ray.nodes()[0]["MetricsExportPort"]
    found, deadline = set(), time.time() + 60
    while len(found) < 2 and time.time() < deadline:
        for line in httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=10).text.splitlines():
            if 'run_id="gauge-test"' in line:
                name, value = line.split("{")[0], float(line.rsplit(" ", 1)[1])
                if name == "ray_phase2_train_loss" and value == pytest.approx(3.6):
                    found.add(name)
                if name == "ray_phase2_train_tokens_per_s" and value == pytest.approx(1024 / 0.02):
                    found.add(name)
        if len(found) < 2:
            time.sleep(0.5)
    ray.kill(actor)
    assert found == {"ray_phase2_train_loss", "ray_phase2_train_tokens_per_s"}
