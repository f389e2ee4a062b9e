"""From a variant's config to the optimization stack that runs: its converters resolved (imported, checked,
hashed), the candidates `auto` tries, the parts `phase2 ablate` trains, and what Ray must ship for a user's
converter to import on every actor and replica. Every consumer (training, the speed trial, `auto`, serving, the
report, MLflow) iterates the same resolved specs, so a user's converter gets what a built-in gets."""

from __future__ import annotations

import functools
import json
from pathlib import Path

from phase2_ray.config.base import ConfigError
from phase2_ray.config.training import VariantConfig
from phase2_ray.core.autotune import REFERENCE
from phase2_ray.core.plugins import TRAINING_HOOKS, PluginError, resolve, ship_paths
from phase2_ray.core.specs import OptimizationSettings, shorthand_specs


@functools.lru_cache(maxsize=256)
def _resolve(use: str, args_json: str) -> str:
    return json.dumps(resolve(use, json.loads(args_json)))


def resolved(use: str, args: dict) -> dict:
    """resolve(), once per (use, args) in this process (it imports the module and builds the class once)."""
    return json.loads(_resolve(use, json.dumps(args, sort_keys=True)))


def absolute_uses(vc: VariantConfig, base: Path) -> None:
    """Makes each file converter's path absolute (relative ones are relative to `base`, the config's folder), so
    that the spec names one file wherever it is read."""
    from phase2_ray.config.training import ConverterUse
    from phase2_ray.core.plugins import is_file, split_use

    out: list = []
    for c in vc.converters:
        use = c if isinstance(c, str) else c.use
        parts = split_use(use) if ":" in use else None
        if parts and is_file(parts[0]) and not Path(parts[0]).is_absolute():
            use = f"{(base / parts[0]).resolve()}:{parts[1]}"
        out.append(use if isinstance(c, str) else ConverterUse(use=use, args=c.args))
    vc.converters = out


def variant_stack(vc: VariantConfig) -> OptimizationSettings:
    """The stack a variant's config asks for (without `auto`'s choice): shorthands and converters, resolved."""
    before, after = shorthand_specs(**vc.shorthands())
    return OptimizationSettings(
        converters=[*before, *(resolved(u, a) for u, a in vc.uses()), *after], delay_pct=vc.delay_pct
    )


def check_variants(variants: dict[str, VariantConfig]) -> None:
    """Every converter of every variant resolves, and fits where it is used; else ConfigError with one line naming
    the variant, the converter and what is wrong (before Ray starts: nothing is lost)."""
    for name, vc in variants.items():
        for i, (use, args) in enumerate(vc.uses()):
            try:
                spec = resolved(use, args)
            except PluginError as e:
                raise ConfigError(f"variants.{name}.converters[{i}]: {e}") from None
            if vc.serve_from is not None and set(spec["hooks"]) & set(TRAINING_HOOKS):
                raise ConfigError(
                    f"variants.{name}.converters[{i}]: {use!r} has training hooks "
                    f"({', '.join(h for h in spec['hooks'] if h != 'serve')}), but {name} is a served copy "
                    f"(serve_from: {vc.serve_from}); train it as a variant instead"
                )
        if vc.serve_from is not None:
            src = variants.get(vc.serve_from)
            if src is None or src.serve_from is not None:
                raise ConfigError(
                    f"variants.{name}.serve_from: {vc.serve_from!r} is not a trained variant of this run "
                    f"({', '.join(k for k, v in variants.items() if v.serve_from is None)})"
                )
        elif vc.converters:
            try:
                stack = variant_stack(vc)
            except PluginError as e:  # pragma: no cover - resolved above
                raise ConfigError(f"variants.{name}: {e}") from None
            makers = [c["name"] for c in stack.converters if "optimizer" in c["hooks"]]
            if len(makers) > 1:
                raise ConfigError(
                    f"variants.{name}: converters {makers} each build the optimizer; a stack may have one"
                )


def auto_candidates(vc: VariantConfig) -> dict[str, OptimizationSettings]:
    """What `auto` tries; the first is the eager fp32 reference every other is judged against. With converters
    listed: each alone, then all together (in the listed order). Without: the built-in menu."""
    ref = {REFERENCE: OptimizationSettings()}
    if not vc.converters:
        c = {
            "fused": OptimizationSettings.of(fused_adamw=True),
            "fused+sdpa-math": OptimizationSettings.of(fused_adamw=True, sdpa_backend="math"),
            "fused+bf16": OptimizationSettings.of(fused_adamw=True, bf16=True),
        }
        if vc.auto_compile:
            c["compile+fused"] = OptimizationSettings.of(compile=True, fused_adamw=True)
            c["compile+fused+bf16"] = OptimizationSettings.of(compile=True, fused_adamw=True, bf16=True)
        return {**ref, **c}
    specs = [resolved(u, a) for u, a in vc.uses()]
    specs = [s for s in specs if set(s["hooks"]) & set(TRAINING_HOOKS)]
    out = {s["name"]: OptimizationSettings(converters=[s]) for s in specs}
    if len(specs) > 1:
        out["+".join(s["name"] for s in specs)] = OptimizationSettings(converters=specs)
    return {**ref, **out}


def runtime_env(stacks: list[OptimizationSettings]) -> dict:
    """The runtime_env entries that carry the stacks' converter files and local packages to every node (Ray's
    `py_modules`); {} when every converter is a built-in or an installed package."""
    paths = ship_paths([c for s in stacks for c in s.converters])
    return {"py_modules": paths} if paths else {}


def converters_env(cfg) -> dict:
    """runtime_env for every actor and replica of a run: the files of every converter any variant lists."""
    stacks = [variant_stack(v) for v in cfg.variants.values()]
    stacks += [s for v in cfg.variants.values() if v.auto for s in auto_candidates(v).values()]
    return runtime_env(stacks)


INT8_SUFFIX = "-int8"


def serve_plan(cfg, checkpoints, aliases: dict[str, str] | None = None) -> dict[str, dict]:
    """Every model id stage 2c serves -> {"source": the checkpoint it loads, "converters": the serve hooks it goes
    through}: each trained variant through its own stack's serve hooks; each served copy (`serve_from`) through
    its source's and then its own; `serve.int8`'s copy of `optimized` through the int8 converter. `aliases`: model
    ids that are a variant's checkpoint under another name (an endpoint's `self: VARIANT`), served as that variant."""
    from phase2_ray.core.specs import builtin_spec

    def own(v: str) -> list[dict]:
        vc = cfg.variants.get(v)
        return variant_stack(vc).serve_converters() if vc is not None and vc.serve_from is None else []

    aliases = aliases or {}
    plan = {v: {"source": v, "converters": own(aliases.get(v, v))} for v in checkpoints}
    for name, vc in cfg.served_copies().items():
        if vc.serve_from in checkpoints:
            plan[name] = {
                "source": vc.serve_from,
                "converters": [*own(vc.serve_from), *variant_stack(vc).converters],
            }
    if cfg.serve.int8 and "optimized" in checkpoints and "optimized" + INT8_SUFFIX not in plan:
        kernel = builtin_spec(
            "int8", {"kernel": cfg.serve.int8_kernel} if cfg.serve.int8_kernel != "auto" else {}
        )
        plan["optimized" + INT8_SUFFIX] = {"source": "optimized", "converters": [*own("optimized"), kernel]}
    return plan
