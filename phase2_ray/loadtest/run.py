"""Stage 2c on the driver: the in-process reference, then every model served over HTTP at each load level in
interleaved rounds, then the replica sweep. Returns the raw records (each tagged with its model, level and round),
replica stats and the reference, for the report to summarise.

Models served elsewhere (the config's external `endpoints`) take their turns in the same rounds, with the same
prompts, seeds and arrivals; they have no reference, replica stats or sweep. One that stops answering mid-run keeps
what it measured and is left out of the rounds after (`endpoints.<name>.failure`)."""

from __future__ import annotations

import logging
import random
import time
import uuid
from dataclasses import asdict, replace

import ray
from ray import serve

from phase2_ray.config import Config
from phase2_ray.dataprep import PreparedData
from phase2_ray.loadtest.actors import run_level, start_clients
from phase2_ray.loadtest.capacity import Slo
from phase2_ray.loadtest.endpoints import broken_off, route_of, still_up, token_checks
from phase2_ray.loadtest.endpoints import external as external_endpoints
from phase2_ray.loadtest.plan import Endpoint, LevelSpec, Route, Slot, interleaved_schedule, rounds_for
from phase2_ray.loadtest.reference import run_reference
from phase2_ray.loadtest.search import capacity_search
from phase2_ray.report.capacity import combine_searches
from phase2_ray.report.gates import undecided_serving
from phase2_ray.report.serving import goodput_slo, request_frame, serving_vs_baseline
from phase2_ray.runlog import RunLog
from phase2_ray.serving.build import (
    APP_NAME,
    deploy_fitted,
    join_or_start_serve,
    model_specs,
    replica_stats,
)
from phase2_ray.stacks import INT8_SUFFIX, serve_plan

AA_CONTROL = "baseline-aa"
"""The model id of validation.aa_control: the baseline's checkpoint served a second time."""


class ValidationStage:
    """One use: `run()` returns 2c's raw results. Variants in `uris` reach the replicas as their storage URI,
    the others as bytes through the object store."""

    def __init__(
        self,
        cfg: Config,
        checkpoints: dict[str, dict[str, bytes]],
        d: PreparedData,
        log: RunLog,
        run_id: str,
        uris: dict[str, str] | None = None,
    ) -> None:
        self.cfg, self.checkpoints, self.d, self.log, self.run_id, self.uris = (
            cfg,
            checkpoints,
            d,
            log,
            run_id,
            uris,
        )
        sc, v = cfg.serve, cfg.validation
        if (
            v.aa_control and "baseline" in checkpoints
        ):  # the same checkpoint under a second name: an A/A control
            self.checkpoints = checkpoints = {**checkpoints, AA_CONTROL: checkpoints["baseline"]}
            if uris and "baseline" in uris:
                self.uris = uris = {**uris, AA_CONTROL: uris["baseline"]}
        # `self: VARIANT` under another name serves through that variant's serve converters
        aliases = {n: e.self_ for n, e in cfg.endpoints.items() if not e.external and e.self_ != n}
        plan = serve_plan(cfg, checkpoints, aliases)
        self.int8_of = "optimized" if "optimized" + INT8_SUFFIX in plan else None
        self.models = model_specs(checkpoints, plan, uris)  # what this run serves
        self.external = external_endpoints(cfg)  # what is served elsewhere
        self.own = {n: e for n, e in cfg.endpoints.items() if not e.external and n in self.models}
        self.model_ids = [*self.models, *self.external]  # every model 2c measures
        self.failed: dict[str, str] = {}  # endpoint -> why it was dropped (it stopped answering)
        # top_k is no OpenAI field (servers such as transformers serve refuse it): with endpoints served
        # elsewhere it is sent, to every model alike, only when the config sets it
        top_k = v.top_k if not external_endpoints(cfg) or "top_k" in v.model_fields_set else None
        self.sampling = dict(max_tokens=v.max_tokens, temperature=v.temperature, top_k=top_k, top_p=v.top_p)
        self.base_url = f"http://{sc.host}:{sc.port}"
        cap = v.capacity
        # the replica sweep's model (the variant the int8 copy comes from, else the first): what would ship
        self.capacity_model = cap.model or self.int8_of or next(iter(checkpoints), None)
        ttft, tpot = cfg.capacity_slo()
        self.slo = Slo(ttft_ms=ttft, tpot_ms=tpot)
        self.out: dict = {
            "capacity": {
                "slo": {"ttft_ms": ttft, "tpot_ms": tpot},
                "goodput_min": cap.goodput_min,
                "runs": [],
            }
            if cap.enabled
            else None,
            "capacity_records": [],
            "workload": d.workload.summary()
            if d.workload
            else {
                "source": f"prompt {v.prompt_tokens}, output {v.max_tokens} tokens (fixed)",
                "requests": len(d.prompts),
                "truncated_prompts": 0,
                "max_tokens": {"min": v.max_tokens, "max": v.max_tokens, "mean": float(v.max_tokens)},
            },
            "records": [],
            "int8_of": self.int8_of,
            "copies": {m: p["source"] for m, p in plan.items() if p["source"] != m},
            "served_converters": {m: p["converters"] for m, p in plan.items() if p["converters"]},
            "models": list(self.model_ids),
            "seed": cfg.training.seed,
            "endpoints": {
                **{
                    m: {"kind": "self", "api": (self.own[m] if m in self.own else v).api} for m in self.models
                },
                **{n: e.describe() for n, e in self.external.items()},
            },
        }
        self.deployed: int | None = None  # replicas of the running application, when a fixed number
        # Unique per stage, not the run id: a resumed run keeps its id, and Serve would keep replicas of an earlier
        # attempt's application holding that attempt's models if one were still deployed under the same version.
        self.version = f"{run_id}:{uuid.uuid4().hex[:8]}"

    def run(self, own_cluster: bool) -> dict:
        if not self.models:  # only endpoints served elsewhere: no reference, Serve, replica stats or sweep
            return self._measure(expected=None)
        self._reference()  # before Serve starts, so that nothing else competes for the cores while it is timed
        if not self.log.text:
            # --quiet / --json-logs promise a parseable stream: Serve's driver-side INFO lines would break it.
            logging.getLogger("ray.serve").setLevel(logging.WARNING)
        sc = self.cfg.serve
        running = join_or_start_serve(sc, self.log)
        if running is not None:  # Serve keeps the HTTP options it started with: requests go where it listens
            self.base_url = "http://{}:{}".format(*running)
        try:
            t_deploy = time.time()
            self._deploy(None)
            self.out["deploy_s"] = time.time() - t_deploy
            self.log.event(
                "serve.ready",
                f"2c: serving {', '.join(self.models)} at {self.base_url}/v1/completions "
                f"({self.out['deploy_s']:.1f}s to deploy)",
            )
            return self._measure(expected=sc.autoscaling.max_replicas if sc.autoscaling else sc.num_replicas)
        finally:
            # The cluster is left as this run found it. One this run started goes down whole with ray.shutdown();
            # on a shared one, Serve stops if this run started it, and otherwise loses only this application
            # (other applications on a long-lived cluster keep serving).
            if running is not None:
                serve.delete(APP_NAME)
            elif not own_cluster:
                serve.shutdown()

    def _measure(self, expected: int | None) -> dict:
        """Load clients, the levels in rounds, the headline's extra looks, then capacity and the replica sweep
        (`expected`: this run's replica count; None when it serves nothing itself)."""
        out, v = self.out, self.cfg.validation
        for name, e in self.external.items():  # checked before Ray started; checked again now it is time
            why = still_up(name, e)
            if why:
                self._drop(name, f"{why} (at the start of 2c)")
        self.clients = start_clients(v.clients, self.run_id)
        out["clients"] = [
            {"name": f"{self.run_id}:2c:client{i}", "node_id": n}
            for i, n in enumerate(ray.get([c.node_id.remote() for c in self.clients]))
        ]
        if out["capacity"] is not None:  # what bounds a scaling efficiency: the cores everything shares
            out["capacity"]["cluster"] = {
                "cpus": ray.cluster_resources().get("CPU", 0),
                "nodes": sum(1 for n in ray.nodes() if n["Alive"]),
                "load_clients": len(self.clients),
            }
        self._levels()
        self._extend_headline()
        if expected is not None:
            out["replicas"] = replica_stats(expected)
        if "baseline" not in self.failed:  # without the reference, no capacity or sweep could be compared
            # with a sweep, each replica count of it gets its search
            if not v.replica_sweep or expected is None:
                self._capacity_searches(expected or 1, out.get("replicas") or [], first=True)
            if expected is not None:
                self._replica_sweep()
        self._token_checks()
        for c in self.clients:
            ray.kill(c)
        return out

    def _drop(self, name: str, why: str) -> None:
        """An endpoint that stopped answering: what it measured is kept; it sits out every later slot."""
        self.failed[name] = why
        self.out["endpoints"][name]["failure"] = why
        self.log.event("endpoint.failed", f"2c: {why}", endpoint=name)

    def _live(self, models: list[str]) -> list[str]:
        return [m for m in models if m not in self.failed]

    def _token_checks(self) -> None:
        checks = token_checks(self.model_ids, self.out["records"], self.external, self.models)
        for m, t in checks.items():
            self.out["endpoints"][m]["tokens"] = t

    def _reference(self) -> None:
        start = time.time()
        self.out["reference"] = run_reference(self.cfg, self.models, self.d, self.sampling)
        self.out["reference_s"] = time.time() - start
        self.log.event(
            "serve.reference",
            f"2c: in-process reference and val loss of {', '.join(self.models)} in {self.out['reference_s']:.1f}s",
        )

    def _deploy(self, replicas: int | None) -> None:
        sc = self.cfg.serve
        n = replicas or (sc.autoscaling.min_replicas if sc.autoscaling else sc.num_replicas) or 1
        fixed = n if replicas or not sc.autoscaling else None
        if fixed is not None and fixed == self.deployed:
            # The same application at the same size is running: Serve would replace its replicas all the same
            # (a new deployment version), which costs a replica start-up and measures nothing more.
            return
        self.deployed = fixed
        # one version for the whole stage: the replica sweep adds replicas instead of replacing them all
        deploy_fitted(self.models, sc, n, replicas, self.version)

    @property
    def endpoint(self) -> Endpoint:
        """Where 2c's requests go (known once Serve runs) and how each one asks."""
        v = self.cfg.validation
        return Endpoint(
            base_url=self.base_url,
            prompts=self.d.requests,
            seed=self.cfg.training.seed,
            timeout_s=v.timeout_s,
            api_key=self.cfg.serve.resolved_api_key(),
            api=v.api,
            routes={
                **{
                    n: Route(self.base_url, n, e.api, self.cfg.serve.resolved_api_key())
                    for n, e in self.own.items()
                },
                **{n: route_of(e) for n, e in self.external.items()},
            },
            **self.sampling,
        )

    def _load(self, spec: LevelSpec) -> list[dict]:
        """One model at one level: the requests split over the clients; records tagged with level and round."""
        recs = run_level(self.clients, self.endpoint, spec)
        self.out["records"] += recs
        self._check_alive(spec, recs)
        return recs

    def _check_alive(self, spec: LevelSpec, recs: list[dict], overloaded: bool = False) -> None:
        """An external endpoint whose requests broke off (refused, cut, timed out, 5xx) is probed again: one that no
        longer answers is dropped, named, from here on (a slow one that still answers keeps its turns).
        `overloaded`: a capacity level, which overloads the server on purpose: only refused connections count."""
        m = spec.model
        if m not in self.external or m in self.failed:
            return
        if broken_off(recs, overloaded):
            why = still_up(m, self.external[m])
            if why:
                self._drop(m, f"{why}: stopped answering mid-run ({spec.level}, round {spec.round})")

    def _levels(self) -> None:
        """One model and level at a time (concurrent load would make them measure each other), the models taking
        turns in seeded random order, round by round (loadtest.plan)."""
        v = self.cfg.validation
        levels = [(f"c{c}", c, None) for c in v.concurrency]
        if v.request_rate:
            levels.append((f"poisson{v.request_rate:g}", max(v.concurrency), v.request_rate))
        self.out["levels"] = [name for name, _, _ in levels]
        schedule = interleaved_schedule(
            self._live(self.model_ids),
            [(name, c) for name, c, _ in levels],
            v.requests,
            v.rounds,
            self.cfg.training.seed,
        )
        self.out["schedule"] = [asdict(s) for s in schedule]
        how = {name: (c, rate) for name, c, rate in levels}
        done: dict[tuple[str, str], list[dict]] = {}
        for slot in schedule:
            if slot.model in self.failed or "baseline" in self.failed:
                continue  # a dropped endpoint sits out; without the baseline nothing is compared
            conc, rate = how[slot.level]
            recs = self._load(
                LevelSpec(
                    model=slot.model,
                    level=slot.level,
                    round=slot.round,
                    n=slot.requests,
                    concurrency=conc,
                    request_rate=rate,
                    first_index=slot.first_index,
                    warmup=v.warmup_requests if slot.round == 0 else 0,
                )
            )
            done.setdefault((slot.model, slot.level), []).extend(recs)
        for (model, name), recs in done.items():
            measured = [r for r in recs if not r.get("warmup")]
            ok = sum(r["ok"] for r in measured)
            self.log.event(
                "load.level",
                f"2c {model} {name}: {ok}/{len(measured)} requests succeeded",
                model=model,
                level=name,
            )

    def _extend_headline(self) -> None:
        """More interleaved rounds of the headline (first) level while a candidate's serving ratio interval
        straddles its margin, `look_rounds` at a time, within validation.max_rounds and max_extra_s. The report
        reads each interval at the last look's spent alpha (report.serving.serving_vs_baseline)."""
        v, tol = self.cfg.validation, self.cfg.targets.serving_regression_pct_max
        name, conc = self.out["levels"][0], v.concurrency[0]
        k0 = rounds_for(v.requests, conc, v.rounds)
        per, n_max = max(1, v.requests // k0), max(v.max_rounds, k0)
        looks, first, t0, last = [k0], v.requests, time.time(), 0.0
        rng = random.Random(self.cfg.training.seed + 1)
        models = self._live(self.model_ids)
        while looks[-1] < n_max and "baseline" in self._live(models) and tol is not None:
            models = self._live(models)
            vs = serving_vs_baseline(
                request_frame(self.out["records"]), models, name, looks, n_max, goodput_slo(self.cfg.targets)
            )
            undecided = undecided_serving(vs, tol)
            if not undecided:
                break
            if time.time() - t0 + last > v.max_extra_s:
                self.log.event(
                    "load.budget", f"2c {name}: extra-round time budget {v.max_extra_s:g} s reached"
                )
                break
            started, add = time.time(), min(v.look_rounds, n_max - looks[-1])
            for rnd in range(looks[-1], looks[-1] + add):
                rng.shuffle(models)  # a fresh order every round, as in the first rounds
                for m in models:
                    if m in self.failed or "baseline" in self.failed:
                        continue  # dropped during this look
                    self._load(
                        LevelSpec(model=m, level=name, round=rnd, n=per, concurrency=conc, first_index=first)
                    )
                    self.out["schedule"].append(asdict(Slot(name, rnd, m, per, first)))
                first += per
            looks.append(looks[-1] + add)
            last = time.time() - started
            self.log.event(
                "load.look",
                f"2c {name}: {len(undecided)} serving ratio(s) undecided ({', '.join(undecided[:3])}"
                f"{', ...' if len(undecided) > 3 else ''}): {add} more round(s), {looks[-1]} in all",
            )
        self.out["headline_looks"], self.out["headline_max_rounds"] = looks, n_max

    def _replica_sweep(self) -> None:
        v = self.cfg.validation
        target = self.capacity_model if self.capacity_model in self.models else self.int8_of
        target = target or next(iter(self.checkpoints))
        self.out["scaling"] = {"model": target if v.replica_sweep else None, "runs": []}
        self.out["scaling_concurrency"] = v.scaling_concurrency
        for n in v.replica_sweep:
            self._deploy(n)
            start = time.time()
            recs = self._load(
                LevelSpec(
                    model=target,
                    level=f"replicas{n}",
                    round=0,
                    n=v.scaling_requests,
                    concurrency=v.scaling_concurrency,
                    warmup=v.warmup_requests,
                )
            )
            stats = replica_stats(n)
            self.out["scaling"]["runs"].append(
                {"replicas": n, "level": f"replicas{n}", "stats": stats, "start": start}
            )
            ok = sum(r["ok"] for r in recs)
            self.log.event(
                "load.sweep",
                f"2c {target} with {n} replica(s) at c{v.scaling_concurrency}: {ok}/{len(recs)} succeeded",
            )
            # the closed-loop load just measured bounds what open-loop arrivals can get through: start under it
            done = [r for r in recs if r["ok"] and not r.get("warmup")]
            span = max((r["end"] for r in done), default=0) - min((r["start"] for r in done), default=0)
            self._capacity_searches(
                n, stats, first=n == v.replica_sweep[0], closed_rps=len(done) / span if span > 0 else None
            )

    def _capacity_searches(
        self, replicas: int, stats: list[dict], first: bool, closed_rps: float | None = None
    ) -> None:
        """The capacity search at this replica count: the searched model, and the baseline model too at the first
        count when a relative gate needs it; each external endpoint at the first count (its replicas are its own)."""
        if self.out["capacity"] is None:
            return
        models = [self.capacity_model] if self.capacity_model in self.models else []
        if first and (self.cfg.validation.capacity.baseline or self.external) and "baseline" not in models:
            models.append("baseline")
        if first:
            models += [m for m in self.external if m not in models]
        models = self._live(models)
        cap = self.cfg.validation.capacity
        start = cap.start_rps or (round(closed_rps / 2, 1) if closed_rps else 4.0)
        searches: dict[str, list[dict]] = {m: [] for m in models}
        for i in range(cap.replicates):  # the models take turns, so replicate i of each is paired in time
            for m in self._live(models):
                searches[m].append(self._capacity(replicas, m, start, i))
        for m in [m for m in models if searches[m]]:
            cv = self.cfg.validation.capacity.between_run_cv_pct
            run = {"replicas": replicas, "model": m, **combine_searches(searches[m], between_run_cv_pct=cv)}
            run["replica_ids"] = [r.get("replica_id") for r in stats]
            run["replica_nodes"] = [r.get("node_id") for r in stats]
            run["client_nodes"] = [c["node_id"] for c in self.out["clients"]]
            self.out["capacity"]["runs"].append(run)
            est = run["capacity_rps"]
            self.log.event(
                "load.capacity",
                f"2c capacity of {m} with {replicas} replica(s): "
                + (f"{est:.1f} req/s [{_num(run['ci_low'])}, {_num(run['ci_high'])}]" if est else "not found")
                + f" under TTFT <= {self.slo.ttft_ms:g} ms, TPOT <= {self.slo.tpot_ms:g} ms "
                f"({cap.replicates} searches, {len(run['levels'])} levels, {run['search_s']:.0f}s; "
                f"{run['stop_reason']})",
                model=m,
                replicas=replicas,
            )

    def _capacity(self, replicas: int, model: str, start_rps: float, replicate: int) -> dict:
        v = self.cfg.validation
        res, recs = capacity_search(
            self.clients,
            replace(self.endpoint, seed=self.cfg.training.seed + 7919 * replicate),
            model,
            v.capacity.model_copy(update={"start_rps": start_rps}),
            self.slo,
            level_prefix=f"capacity:r{replicas}:{model}:s{replicate}",
        )
        self.out["capacity_records"] += recs
        spec = LevelSpec(model=model, level="capacity", round=replicate, n=0, concurrency=1)
        self._check_alive(spec, recs, overloaded=True)
        return {"replicate": replicate, **res}


def _num(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f}"
