"""Stage 2c's load generator: a Ray actor that drives the HTTP endpoint with the streaming client."""

from __future__ import annotations

import ray

from phase2_ray.client import run_requests


@ray.remote(num_cpus=0)
class LoadClient:
    """Runs on any node (num_cpus=0: it waits on sockets); records travel back to the driver as results."""

    def run(self, base_url: str, variant: str, prompts: list[str], **kwargs) -> list[dict]:
        return run_requests(base_url, variant, prompts, **kwargs)
