"""`phase2` command line: argument parsing and exit codes, nothing else."""

from __future__ import annotations

import argparse
import json
import sys

from phase2_ray.config import ConfigError

EXIT_USAGE = 2


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="phase2",
        description="Train baseline and optimized GPTs on Ray, validate them through Ray Serve, report and decide.",
    )
    sub = p.add_subparsers(dest="command", required=True)
    run = sub.add_parser(
        "run",
        help="run stages 2a-2d; exit 0 approved, 1 rejected, 2 bad config, 3 stage failed, 4 inconclusive",
    )
    val = sub.add_parser(
        "validate",
        help="stages 2c and 2d alone on the config's endpoints (OpenAI-compatible servers or this run's own "
        "Serve deployment), no training; exit codes as run",
    )
    ablate = sub.add_parser(
        "ablate", help="like run, with each optimization alone and all together as concurrent variants"
    )
    srv = sub.add_parser(
        "serve", help="serve a finished run's checkpoints over the OpenAI-compatible API until Ctrl-C"
    )
    rep = sub.add_parser(
        "report", help="redraw report.md, report.html and plots/ of a run from its files (no Ray)"
    )
    rep.add_argument("run_dir", metavar="RUN_DIR")
    sch = sub.add_parser(
        "schema", help="print report.json's JSON Schema (the contract a run's report.json is checked against)"
    )
    sch.add_argument("--output", metavar="FILE", help="write it to FILE instead")
    exp = sub.add_parser(
        "export",
        help="write a run's trained variant as a Hugging Face GPT-2 directory (no Ray, no transformers)",
    )
    exp.add_argument("run_dir", metavar="RUN_DIR")
    exp.add_argument("--variant", default="optimized", help="which trained variant (default: optimized)")
    exp.add_argument(
        "--format", default="hf", choices=("hf",), help="hf: transformers' from_pretrained layout"
    )
    exp.add_argument("--output", required=True, metavar="DIR", help="directory to write")
    cmp_ = sub.add_parser(
        "compare",
        help="compare two saved runs (no Ray); exit 1 when B has a significant regression against A, 4 when "
        "some figure cannot rule one out, 0 otherwise",
    )
    cmp_.add_argument("run_a", metavar="RUN_A", help="the reference run directory")
    cmp_.add_argument("run_b", metavar="RUN_B", help="the run under test")
    cmp_.add_argument("--output", help="write FILE.md and FILE.json (default: RUN_B/compare)")
    cmp_.add_argument(
        "--alpha", type=float, default=0.05, help="family-wise error rate over all tested figures (Holm)"
    )
    cmp_.add_argument(
        "--timing-noise-pct",
        type=float,
        default=50.0,
        help="absolute timings must change by more than this to count (runs minutes apart drift)",
    )
    cmp_.add_argument(
        "--speedup-noise-pct", type=float, default=5.0, help="the speedup must change by more than this"
    )
    for p_ in (run, val, ablate, srv):
        _run_args(p_)
    run.add_argument(
        "--resume",
        metavar="RUN_DIR",
        help="continue an interrupted run in RUN_DIR (its config, run id and saved training states); --set may "
        "change anything but data, model, training and variants",
    )
    srv.add_argument("--checkpoints", required=True, metavar="RUN_DIR", help="directory of a finished run")
    srv.add_argument("--port", type=int, help="HTTP port (default: serve.port from the config)")
    return p


def _run_args(run: argparse.ArgumentParser) -> None:
    run.add_argument("-c", "--config", help="YAML config (default: configs/phase2.yaml)")
    run.add_argument("--output", help="run directory (default: results/<run_id>/)")
    run.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a config value, parsed as YAML (e.g. --set training.steps=50); repeatable",
    )
    run.add_argument(
        "--address", help="Ray cluster address (default: RAY_ADDRESS, else an embedded local Ray)"
    )
    out = run.add_mutually_exclusive_group()
    out.add_argument(
        "--quiet", action="store_true", help="no progress output; the report path is still printed"
    )
    out.add_argument("--json-logs", action="store_true", help="progress as one JSON object per line (for CI)")


def main(argv: list[str] | None = None) -> int:
    try:
        args = _parser().parse_args(argv)
    except SystemExit as e:  # argparse exits 2 on usage errors, 0 on --help
        return int(e.code or 0)
    if args.command == "report":
        return _report(args.run_dir)
    if args.command == "schema":
        return _schema(args.output)
    if args.command == "export":
        from phase2_ray.export import export_hf

        try:
            out = export_hf(args.run_dir, args.output, args.variant)
        except (FileNotFoundError, ValueError) as e:
            print(f"phase2: {e}", file=sys.stderr)
            return EXIT_USAGE
        arch = json.loads((out / "config.json").read_text())["architectures"][0]
        print(f"exported {args.variant} of {args.run_dir} to {out} (Hugging Face {arch})")
        return 0
    if args.command == "compare":
        return _compare(
            args.run_a,
            args.run_b,
            args.output,
            alpha=args.alpha,
            timing_noise_pct=args.timing_noise_pct,
            speedup_noise_pct=args.speedup_noise_pct,
        )
    try:
        overrides = args.overrides + (["ablation=true"] if args.command == "ablate" else [])
        if args.command == "serve" and args.port is not None:
            overrides.append(f"serve.port={args.port}")
        resume_dir, resume_id = getattr(args, "resume", None), None
        if resume_dir:
            from phase2_ray.resume import load_resume

            if args.config or args.output:
                raise ConfigError(
                    "--resume RUN_DIR takes the config and output directory of that run: drop -c/--output"
                )
            cfg, resume_id = load_resume(resume_dir, overrides)
        else:
            from phase2_ray.configure import load_config  # imports torch: not for `report` or `compare`

            cfg = load_config(args.config or "configs/phase2.yaml", overrides)
        # Ray and torch are imported only once the config is good.
        if args.command == "serve":
            from phase2_ray.serving.command import serve_checkpoints

            serve_checkpoints(cfg, args.checkpoints, address=args.address)
            return 0
        mode = "quiet" if args.quiet else "json" if args.json_logs else "text"
        if args.command == "validate":
            from phase2_ray.validate import run_validate

            code, md = run_validate(cfg, output=args.output, address=args.address, log_mode=mode)
            _print_report_path(md, code, mode)
            return code
        from phase2_ray.pipeline import run_pipeline

        code, md = run_pipeline(
            cfg, output=resume_dir or args.output, address=args.address, log_mode=mode, resume_id=resume_id
        )
    except ConfigError as e:
        print(f"phase2: {e}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:  # before any stage started (data preparation, Ray start-up): nothing to report
        if args.command == "serve":
            print("phase2: interrupted while Ray was starting; nothing was served", file=sys.stderr)
        else:
            print("phase2: interrupted before training started; no report was written", file=sys.stderr)
        return 3
    _print_report_path(md, code, mode)
    return code


def _print_report_path(md, code: int, mode: str) -> None:
    """The last line: the report's path, or with --json-logs the same as one more JSON object, so that every
    line of that stream parses."""
    if mode == "json":
        print(json.dumps({"event": "run.report", "message": str(md), "path": str(md), "exit_code": code}))
    else:
        print(md)


def _report(run_dir: str) -> int:
    from pathlib import Path

    if not (Path(run_dir) / "report.json").is_file():
        print(f"phase2: {run_dir}: no report.json (pass the directory of a finished run)", file=sys.stderr)
        return EXIT_USAGE
    from phase2_ray.report import render_run_dir
    from phase2_ray.report.schema.migrate import ReportError

    try:
        print(render_run_dir(run_dir))
    except ReportError as e:
        print(f"phase2: {e}", file=sys.stderr)
        return EXIT_USAGE
    return 0


def _schema(output: str | None) -> int:
    from phase2_ray.report.schema.reference import schema_text

    if output:
        from phase2_ray.core.atomic import write_atomic

        print(write_atomic(output, schema_text()))
    else:
        print(schema_text(), end="")
    return 0


def _compare(run_a: str, run_b: str, output: str | None, **opts: float) -> int:
    from pathlib import Path

    for run in (run_a, run_b):
        if not (Path(run) / "report.json").is_file():
            print(f"phase2: {run}: no report.json (pass the directory of a finished run)", file=sys.stderr)
            return EXIT_USAGE
    from phase2_ray.report import compare

    if not 0 < opts.get("alpha", 0.05) < 1:
        print(f"phase2: --alpha {opts['alpha']}: must lie between 0 and 1", file=sys.stderr)
        return EXIT_USAGE
    from phase2_ray.report.schema.migrate import ReportError

    try:
        c = compare.compare_runs(run_a, run_b, **opts)
    except ReportError as e:
        print(f"phase2: {e}", file=sys.stderr)
        return EXIT_USAGE
    path = compare.write(c, output or Path(run_b) / "compare")
    print(compare.render(c))
    print(path)
    return {"regression": 1, "inconclusive": 4, "no regression": 0}[c["outcome"]]


if __name__ == "__main__":
    sys.exit(main())
