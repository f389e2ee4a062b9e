"""Bad input as a corpus: every broken config, override, path, port or resource request exits 2 with one line that
names the field, before Ray starts or anything is written. Run in a fresh process (no Ray cluster in it), so that
"nothing started" is checked for real: no Ray, no child processes, no output directory."""

import json
import socket
import subprocess
import sys

from tests.conftest import ROOT

SMOKE = str(ROOT / "configs" / "smoke.yaml")

# (name, argv after `run`, fragment the one-line message must contain; `a|b`: both). {tmp} is a scratch directory.
CASES = [
    ("missing config file", ["-c", "{tmp}/missing.yaml"], "cannot read"),
    ("malformed yaml", ["-c", "{tmp}/malformed.yaml"], "not valid YAML"),
    ("top level not a mapping", ["-c", "{tmp}/scalar.yaml"], "top level must be a mapping"),
    ("python object tag", ["-c", "{tmp}/evil.yaml"], "not valid YAML"),
    ("unknown section", ["--set", "trainig.steps=5"], "trainig: unknown key"),
    ("unknown key", ["--set", "training.stepz=5"], "training.stepz: unknown key"),
    ("wrong type", ["--set", "training.steps=ten"], "training.steps: Input should be a valid integer"),
    ("string for a number", ["--set", "training.lr='0.1'"], "training.lr"),
    ("negative steps", ["--set", "training.steps=-1"], "training.steps"),
    ("zero batch", ["--set", "training.batch_size=0"], "training.batch_size"),
    ("zero width", ["--set", "model.d_model=0"], "model.d_model"),
    ("heads do not divide width", ["--set", "model.n_head=5"], "divisible by n_head=5"),
    ("vocab below the byte alphabet", ["--set", "data.vocab_size=100"], "data.vocab_size"),
    ("zero learning rate", ["--set", "training.lr=0"], "training.lr"),
    ("min_lr above lr", ["--set", "training.min_lr=1"], "min_lr=1.0 must not exceed lr"),
    (
        "nothing left to measure",
        ["--set", "training.measurement.skip_steps=60"],
        "skip_steps=60 must be below steps=60",
    ),
    ("no baseline", ["--set", "variants={{fast: {{}}}}"], "variants must hold 'baseline'"),
    ("bad variant name", ["--set", "variants.Fast.compile=true"], "variant names ['Fast']"),
    (
        "unknown isolation",
        ["--set", "training.measurement.isolation=parallel"],
        "training.measurement.isolation",
    ),
    ("prompt + output beyond context", ["--set", "validation.max_tokens=100"], "must fit model.block_size"),
    ("zero concurrency", ["--set", "validation.concurrency=[0]"], "every value must be >= 1"),
    ("port zero", ["--set", "serve.port=0"], "serve.port"),
    ("success rate above 1", ["--set", "targets.success_rate_min=2"], "targets.success_rate_min"),
    ("run name escaping the output root", ["--set", "run_name=../../etc"], "run_name"),
    ("storage not a URI", ["--set", "storage.uri=/plain/path"], "storage.uri"),
    ("override without =", ["--set", "training"], "expected KEY=VALUE"),
    ("empty corpus", ["--set", "data.paths=[{tmp}/empty.txt]"], "at least 1000 are needed"),
    (
        "unreadable corpus path",
        ["--set", "data.paths=[{tmp}/none/*.txt]"],
        "data.paths|matches no readable file",
    ),
    ("output under a file", ["--output", "{tmp}/afile/run"], "is a file, not a directory"),
    ("port in use", ["--set", "serve.port={busy_port}"], "serve.port={busy_port}: cannot listen"),
    (
        "workload file with a bad line",
        ["--set", "validation.workload.file={tmp}/bad.jsonl"],
        "bad.jsonl, line 4: not JSON",
    ),
    (
        "workload line without a prompt",
        ["--set", "validation.workload.file={tmp}/noprompt.jsonl"],
        'noprompt.jsonl, line 1: expected {{"prompt"',
    ),
    (
        "workload max_tokens not a count",
        ["--set", "validation.workload.file={tmp}/badmax.jsonl"],
        "badmax.jsonl, line 2: max_tokens must be an integer >= 1",
    ),
    (
        "missing workload file",
        ["--set", "validation.workload.file={tmp}/nope.jsonl"],
        "nope.jsonl: cannot read",
    ),
    (
        "ShareGPT file that is not a list of conversations",
        [
            "--set",
            "validation.workload.file={tmp}/sharegpt.json",
            "--set",
            "validation.workload.format=sharegpt",
        ],
        "sharegpt.json: a ShareGPT file is a JSON list",
    ),
    (
        "uniform lengths without a max",
        ["--set", "validation.workload.prompt_tokens={{dist: uniform, min: 4}}"],
        "dist: uniform needs max",
    ),
    (
        "a capacity gate with the search off",
        ["--set", "targets.capacity_rps_min=10", "--set", "validation.capacity.enabled=false"],
        "need validation.capacity.enabled: true",
    ),
    (
        "more CPUs than the machine",
        ["--set", "training.placement.cpus_per_actor=4096"],
        "training.placement.cpus_per_actor=4096",
    ),
    (
        "replica bigger than the machine",
        ["--set", "serve.cpus_per_replica=4096"],
        "serve.cpus_per_replica=4096",
    ),
    (
        "a GPU this machine lacks",
        ["--set", "training.placement.gpus_per_actor=1"],
        "training.placement.gpus_per_actor=1 exceeds",
    ),
]

HARNESS = r"""
import contextlib, io, json, os, sys
import psutil, ray
from phase2_ray.cli import main
cases, out = json.loads(sys.argv[1]), []
for name, argv, fragment in cases:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        rc = main(["run", *argv])
    out.append({"name": name, "rc": rc, "stderr": err.getvalue(), "ray": ray.is_initialized(),
                "children": len(psutil.Process().children(recursive=True))})
print(json.dumps(out))
"""


def test_bad_input_corpus_exits_2_with_one_line_and_starts_nothing(tmp_path):
    (tmp_path / "malformed.yaml").write_text("training: [unclosed\n")
    (tmp_path / "scalar.yaml").write_text("42\n")
    (tmp_path / "evil.yaml").write_text("run_name: !!python/object/apply:os.system ['echo pwned']\n")
    (tmp_path / "empty.txt").write_text("")
    (tmp_path / "afile").write_text("not a directory")
    good = '{"prompt": "def main():", "max_tokens": 8}\n'
    (tmp_path / "bad.jsonl").write_text(good + "\n" + good + "{not json\n")  # line 2 blank, line 4 bad
    (tmp_path / "noprompt.jsonl").write_text('{"text": "x"}\n')
    (tmp_path / "badmax.jsonl").write_text(good + '{"prompt": "x", "max_tokens": 0}\n')
    (tmp_path / "sharegpt.json").write_text('{"conversations": []}')
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = busy.getsockname()[1]
    out_dir = tmp_path / "out"
    cases = []
    for name, argv, fragment in CASES:
        argv = [a.format(tmp=tmp_path, busy_port=port) for a in argv]
        if "-c" not in argv:
            argv = ["-c", SMOKE, *argv]
        if "--output" not in argv:
            argv += ["--output", str(out_dir)]
        cases.append((name, argv, fragment.format(busy_port=port)))
    assert len(cases) >= 25
    env = {
        "PATH": "/usr/bin:/bin",
        "HOME": str(tmp_path),
    }  # no RAY_ADDRESS: an accepted config would start Ray
    proc = subprocess.run(
        [sys.executable, "-c", HARNESS, json.dumps(cases)], capture_output=True, text=True, cwd=ROOT, env=env,
        timeout=600,
    )  # fmt: skip
    busy.close()
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads(proc.stdout.strip().splitlines()[-1])
    for (name, _, fragment), r in zip(cases, results, strict=True):
        lines = r["stderr"].strip().splitlines()
        assert r["rc"] == 2, (name, r)
        assert len(lines) == 1 and lines[0].startswith("phase2: "), (name, r["stderr"])
        assert all(f in lines[0] for f in fragment.split("|")), (name, lines[0])
        assert not r["ray"] and r["children"] == 0, (name, "something started")
    assert not out_dir.exists()  # nothing written for any of them
    assert not (tmp_path / "afile" / "run").exists()
