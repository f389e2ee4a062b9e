"""The Serve deployment's options from the config, without starting Serve (the application over HTTP is tested in
tests/integration/test_serve_app.py)."""

from phase2_ray.config import ServeConfig


def test_engine_options_carry_replicas_autoscaling_and_backpressure():
    from phase2_ray.config import AutoscalingConfig
    from phase2_ray.serving.build import engine_options

    fixed = engine_options(ServeConfig(num_replicas=3, max_ongoing_requests=7, max_queued_requests=9))
    assert fixed["num_replicas"] == 3 and "autoscaling_config" not in fixed
    assert fixed["max_ongoing_requests"] == 7 and fixed["max_queued_requests"] == 9
    auto = engine_options(ServeConfig(autoscaling=AutoscalingConfig(min_replicas=1, max_replicas=4)))
    assert auto["autoscaling_config"]["max_replicas"] == 4 and "num_replicas" not in auto
    env = auto["ray_actor_options"]["runtime_env"]["env_vars"]
    assert env["RAY_SERVE_RUN_USER_CODE_IN_SEPARATE_THREAD"] == "0"
