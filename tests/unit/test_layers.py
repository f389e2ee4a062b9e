"""The layering README.md's code map states, checked the way test_security.py scans for unsafe loading: every
`phase2_ray` import in the package (at module level or inside a function: a lazy import is still a dependency)
goes to the importer's own layer or one below, the modules form no cycle, and the layers that promise to run
without Ray or torch do."""

import ast
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PKG = ROOT / "phase2_ray"


def layers() -> dict[str, int]:
    """unit (a top-level module or subpackage of phase2_ray) -> its layer, from README.md's `Layers:` block."""
    text = (ROOT / "README.md").read_text()
    block = re.search(r"Layers \(.*?\n```\n(.*?)```", text, re.S)
    assert block, "README.md's code map has no Layers block"
    out = {}
    for line in block.group(1).splitlines():
        m = re.match(r"(\d+) +\S+ +(.+)", line.strip())
        assert m, f"unreadable Layers line: {line!r}"
        for unit in m.group(2).split(","):
            out[unit.strip()] = int(m.group(1))
    return out


def unit_of(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "__init__"
    return parts[1]


def edges() -> dict[tuple[str, str], str]:
    """(importer's unit, imported unit) -> one file where it happens."""
    out = {}
    for f in PKG.rglob("*.py"):
        rel = f.relative_to(ROOT).with_suffix("")
        src = "__init__" if rel.parts == ("phase2_ray", "__init__") else rel.parts[1]
        for node in ast.walk(ast.parse(f.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "phase2_ray":
                targets = (
                    [node.module]
                    if node.module != "phase2_ray"
                    else [f"phase2_ray.{a.name}" for a in node.names]
                )
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.split(".")[0] == "phase2_ray"]
            else:
                continue
            for t in targets:
                dst = unit_of(t)
                dst = dst if (PKG / dst).is_dir() or (PKG / f"{dst}.py").is_file() else "__init__"
                if dst != src:
                    out.setdefault((src, dst), str(f.relative_to(ROOT)))
    return out


def test_every_unit_has_a_layer():
    units = {
        p.stem if p.is_file() else p.name
        for p in PKG.iterdir()
        if p.suffix == ".py" or (p / "__init__.py").is_file()
    }
    assert units - set(layers()) == set(), "add these to README.md's Layers block"
    assert set(layers()) - units == set(), "README.md's Layers block names units that do not exist"


def test_imports_point_down_or_sideways():
    layer = layers()
    up = [
        f"{f}: {s} (layer {layer[s]}) imports {d} (layer {layer[d]})"
        for (s, d), f in edges().items()
        if layer[d] > layer[s]
    ]
    assert not up, "\n".join(up)


def test_no_import_cycles_between_units():
    graph: dict[str, set[str]] = {}
    for s, d in edges():
        graph.setdefault(s, set()).add(d)
    seen: dict[str, int] = {}  # 1 on the stack, 2 done

    def visit(n: str, path: list[str]) -> None:
        seen[n] = 1
        for m in sorted(graph.get(n, ())):
            assert seen.get(m) != 1, f"import cycle: {' -> '.join([*path, n, m])}"
            if m not in seen:
                visit(m, [*path, n])
        seen[n] = 2

    for n in sorted(graph):
        if n not in seen:
            visit(n, [])


def test_the_report_and_config_layers_run_without_ray_or_torch():
    """`phase2 report` and `phase2 compare` render from report.json alone (the command line imports torch only for
    the commands that load a config); the config loads before Ray starts."""
    code = (
        "import sys\n"
        "import phase2_ray.cli, phase2_ray.config, phase2_ray.config.redact, phase2_ray.report\n"
        "import phase2_ray.report.compare\n"
        "import phase2_ray.report.markdown, phase2_ray.report.html, phase2_ray.report.gates, phase2_ray.records\n"
        "print(sorted(m for m in ('torch', 'ray') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_core_imports_no_ray():
    for f in (PKG / "core").rglob("*.py"):
        for node in ast.walk(ast.parse(f.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module] if isinstance(node, ast.ImportFrom) and node.module else []
            assert not any(n == "ray" or n.startswith("ray.") for n in names), f"{f} imports Ray"
