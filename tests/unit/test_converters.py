"""Converters: the protocol, the built-ins as converters, a user's converter by file or module with args, and
every bad plugin refused before Ray starts with one line naming it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from phase2_ray.config import ConfigError, VariantConfig
from phase2_ray.configure import load_config
from phase2_ray.core.converters import BUILTINS, ConverterFailed, ConverterStack
from phase2_ray.core.memory import peak_training_memory
from phase2_ray.core.model import GPTConfig
from phase2_ray.core.plugins import hooks_of, resolve
from phase2_ray.core.specs import BUILTIN_HOOKS, OptimizationSettings, builtin_spec, same_stack
from phase2_ray.core.train import Trainer, TrainSettings, train
from phase2_ray.stacks import auto_candidates, variant_stack

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "converters"


def write(tmp: Path, name: str, body: str) -> Path:
    p = tmp / name
    p.write_text(textwrap.dedent(body))
    return p


def tiny(tok) -> GPTConfig:
    return GPTConfig(vocab_size=tok.get_vocab_size(), block_size=32, n_layer=2, n_head=2, d_model=16)


def loop(steps: int = 8) -> TrainSettings:
    return TrainSettings(steps=steps, batch_size=4, lr=3e-3, min_lr=3e-4, warmup_steps=2, eval_windows=4)


def test_builtin_hooks_table_matches_the_classes():
    # specs.BUILTIN_HOOKS is read without torch (report, compare); it must say what the classes implement
    assert {n: hooks_of(c) for n, c in BUILTINS.items()} == BUILTIN_HOOKS
    assert resolve("sdpa", {"backend": "math"})["hooks"] == ["step_context"]


def test_a_file_converter_resolves_with_its_source_and_args(tmp_path):
    f = write(
        tmp_path,
        "opt.py",
        """
        class Scale:
            changes_numerics = False
            def __init__(self, factor: float = 1.0):
                self.factor = factor
            def convert(self, model):
                return model
        """,
    )
    spec = resolve(f"{f}:Scale", {"factor": 2.0})
    assert spec["name"] == "Scale" and spec["args"] == {"factor": 2.0} and spec["hooks"] == ["convert"]
    assert spec["changes_numerics"] is False
    import hashlib

    assert (
        spec["source"]["kind"] == "file"
        and spec["source"]["sha256"] == hashlib.sha256(f.read_bytes()).hexdigest()
    )
    # the same code under another path is the same converter; other args are another stack
    g = tmp_path / "sub"
    g.mkdir()
    (g / "opt.py").write_text(f.read_text())
    a = OptimizationSettings(converters=[spec])
    assert same_stack(a, OptimizationSettings(converters=[resolve(f"{g / 'opt.py'}:Scale", {"factor": 2.0})]))
    assert not same_stack(a, OptimizationSettings(converters=[resolve(f"{f}:Scale", {"factor": 3.0})]))


def test_a_module_converter_names_its_package(tmp_path, monkeypatch):
    pkg = tmp_path / "my_opts"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    write(
        pkg,
        "fused.py",
        "class Noop:\n    def step_context(self):\n        import contextlib\n        return contextlib.nullcontext()\n",
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    spec = resolve("my_opts.fused:Noop")
    assert spec["source"]["kind"] == "module" and spec["source"]["module"] == "my_opts.fused"
    assert spec["source"]["sha256"]  # its file's hash: an edit makes it another converter
    assert spec["changes_numerics"] is True  # unless the class says otherwise


BAD = {
    "missing file": ("nope.py:X", {}, "does not exist"),
    "import error": ("broken.py:X", {}, "does not import: ModuleNotFoundError"),
    "no class": ("plain.py:Missing", {}, "has no attribute 'Missing'"),
    "no hook": ("plain.py:Nothing", {}, "implements none of the hooks"),
    "bad args": ("plain.py:Hooked", {"wrong": 1}, "do not fit Hooked"),
    "constructor refuses": ("plain.py:Hooked", {"level": -1}, "raised ValueError: level must be >= 0"),
    "unknown built-in": ("fast_kernels", {}, "is not a built-in"),
    "not a module path": ("no_such_pkg.mod:X", {}, "does not import"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_plugins_are_config_errors_in_one_line(case, tmp_path):
    write(tmp_path, "broken.py", "import no_such_module_anywhere\n")
    write(
        tmp_path,
        "plain.py",
        """
        class Nothing:
            pass
        class Hooked:
            def __init__(self, level: int = 0):
                if level < 0:
                    raise ValueError("level must be >= 0")
            def serve(self, model):
                return model
        """,
    )
    use, args, why = BAD[case]
    cfg = tmp_path / "c.yaml"
    cfg.write_text(
        "variants:\n  baseline: {}\n  optimized:\n    converters:\n"
        f"      - {{use: '{use}', args: {args!r}}}\n".replace("'", '"')
    )
    with pytest.raises(ConfigError) as e:
        load_config(cfg)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("variants.optimized.converters[0]: converter") and why in msg
    assert use.split(":")[0].removesuffix(".py") in msg  # names the converter


def test_bad_plugin_exits_2_before_ray_starts(tmp_path):
    write(tmp_path, "plain.py", "class Nothing:\n    pass\n")
    cfg = tmp_path / "c.yaml"
    cfg.write_text('variants:\n  baseline: {}\n  optimized:\n    converters: ["plain.py:Nothing"]\n')
    p = subprocess.run(
        [sys.executable, "-m", "phase2_ray.cli", "run", "-c", str(cfg), "--output", str(tmp_path / "out")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert p.returncode == 2, p.stderr
    lines = [x for x in p.stderr.splitlines() if x.strip()]
    assert len(lines) == 1 and "plain.py:Nothing" in lines[0] and "implements none of the hooks" in lines[0]
    assert "Ray" not in p.stderr and not (tmp_path / "out").exists()  # nothing started, nothing written


def test_shorthands_and_converters_are_one_stack():
    legacy = OptimizationSettings.from_dict(
        {"compile": False, "fused_adamw": True, "bf16": False, "sdpa_backend": "math"}
    )
    new = variant_stack(
        VariantConfig(converters=["fused_adamw", {"use": "sdpa", "args": {"backend": "math"}}])
    )
    assert same_stack(legacy, new) and legacy.names() == ["fused_adamw", "sdpa"]
    # compile comes last from the shorthand: it compiles what every other converter made
    assert variant_stack(VariantConfig(compile=True, converters=["bf16"])).names() == ["bf16", "compile"]
    with pytest.raises(ConverterFailed, match="each build the optimizer"):
        ConverterStack([builtin_spec("fused_adamw"), builtin_spec("fused_adamw")])


def test_hooks_compose_in_order_and_a_raising_hook_is_named(tmp_path, tiny_corpus):
    _, tok, train_ids, _ = tiny_corpus
    f = write(
        tmp_path,
        "hooks.py",
        """
        import contextlib
        LOG = []
        class A:
            def convert(self, model):
                LOG.append("A.convert"); return model
            @contextlib.contextmanager
            def step_context(self):
                LOG.append("A.enter"); yield; LOG.append("A.exit")
        class B:
            def convert(self, model):
                LOG.append("B.convert"); return model
            @contextlib.contextmanager
            def step_context(self):
                LOG.append("B.enter"); yield; LOG.append("B.exit")
        class Boom:
            def step_context(self):
                raise RuntimeError("kernel not found")
        """,
    )
    stack = OptimizationSettings(converters=[resolve(f"{f}:A"), resolve(f"{f}:B")])
    tr = Trainer(tiny(tok), loop(2), stack, train_ids)
    tr.train_step()
    log = sys.modules[
        next(m for m in sys.modules if m.startswith("phase2_plugin_") and m.endswith("_hooks"))
    ].LOG
    assert log == ["A.convert", "B.convert", "A.enter", "B.enter", "B.exit", "A.exit"]
    bad = OptimizationSettings(converters=[resolve(f"{f}:Boom")])
    with pytest.raises(
        ConverterFailed, match=r"converter 'Boom' .* raised in step_context: RuntimeError: kernel"
    ):
        Trainer(tiny(tok), loop(2), bad, train_ids).train_step()


def test_convert_must_train_the_models_own_parameters(tmp_path, tiny_corpus):
    _, tok, train_ids, _ = tiny_corpus
    f = write(
        tmp_path,
        "swap.py",
        """
        import copy
        class Swap:
            def convert(self, model):
                return copy.deepcopy(model)
        """,
    )
    with pytest.raises(ConverterFailed, match="does not train the model's own parameters"):
        Trainer(tiny(tok), loop(2), OptimizationSettings(converters=[resolve(f"{f}:Swap")]), train_ids)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_activation_checkpointing_trains_identically_with_less_memory(tiny_corpus, arch):
    """A user's converter on either architecture (the llama's blocks take rotary tables as well)."""
    _, tok, train_ids, val_ids = tiny_corpus
    cfg = GPTConfig(
        vocab_size=tok.get_vocab_size(), block_size=64, n_layer=3, n_head=2, d_model=32, arch=arch
    )
    ac = OptimizationSettings(converters=[resolve(f"{EXAMPLES / 'act_checkpoint.py'}:ActCheckpoint")])
    a, _ = train(cfg, loop(6), OptimizationSettings(), train_ids, val_ids)
    b, _ = train(cfg, loop(6), ac, train_ids, val_ids)
    assert a.losses == b.losses  # recomputation is exact
    ma = peak_training_memory(cfg, loop(), OptimizationSettings(), train_ids)
    mb = peak_training_memory(cfg, loop(), ac, train_ids)
    assert 0 < mb["bytes"] < 0.9 * ma["bytes"], (ma, mb)
    assert "MemTracker" in ma["method"]


def test_peak_memory_counts_parameters_and_optimizer_state(tiny_corpus):
    _, tok, train_ids, _ = tiny_corpus
    cfg = tiny(tok)
    m = peak_training_memory(cfg, loop(), OptimizationSettings(), train_ids)
    params = sum(
        p.numel() * 4 for p in Trainer(cfg, loop(2), OptimizationSettings(), train_ids).model.parameters()
    )
    # weights + grads + two AdamW moments at least, and not absurdly more at this size
    assert 4 * params <= m["bytes"] < 200 * params


def test_auto_candidates_from_the_users_converters():
    vc = VariantConfig(auto=True, converters=["fused_adamw", {"use": "sdpa", "args": {"backend": "math"}}])
    c = auto_candidates(vc)
    assert list(c) == ["eager-fp32", "fused_adamw", "sdpa", "fused_adamw+sdpa"]
    assert c["fused_adamw+sdpa"].names() == ["fused_adamw", "sdpa"]
    assert "compile+fused" not in auto_candidates(VariantConfig(auto=True, auto_compile=False))


def test_ablation_parts_are_the_listed_converters(tmp_path):
    f = EXAMPLES / "act_checkpoint.py"
    cfg = load_config(
        None,
        [
            f"variants.optimized.converters=['fused_adamw', '{f}:ActCheckpoint']",
            "variants.optimized.auto=false",
            "ablation=true",
        ],
    )
    assert list(cfg.variants) == ["baseline", "fused_adamw", "actcheckpoint", "all"]
    assert variant_stack(cfg.variants["all"]).names() == ["fused_adamw", "ActCheckpoint"]
    # a config of serving converters alone ablates to its copies (the serve hook alone is the copy)
    prune = load_config(EXAMPLES / "prune.yaml", ["ablation=true"])
    assert list(prune.variants) == ["baseline", "pruned"]
    builtin = load_config(None, ["ablation=true"])
    assert list(builtin.variants) == ["baseline", "compile", "fused_adamw", "bf16", "sdpa_math", "all"]


def test_served_copies_take_serve_hooks_only(tmp_path):
    f = EXAMPLES / "prune.py"
    ok = load_config(None, [f"variants.pruned={{serve_from: baseline, converters: ['{f}:MagnitudePrune']}}"])
    assert list(ok.trained()) == ["baseline", "optimized"] and list(ok.served_copies()) == ["pruned"]
    with pytest.raises(ConfigError, match="has training hooks"):
        load_config(None, ["variants.pruned={serve_from: baseline, converters: [fused_adamw]}"])
    with pytest.raises(ConfigError, match="not a trained variant"):
        load_config(None, [f"variants.pruned={{serve_from: nobody, converters: ['{f}:MagnitudePrune']}}"])


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_int8_is_a_serve_converter(tiny_corpus, arch):
    _, tok, *_ = tiny_corpus
    torch.manual_seed(0)
    from phase2_ray.core.model import build_model

    model = build_model(replace(tiny(tok), arch=arch, tie_embeddings=arch == "gpt2"))
    stack = ConverterStack([builtin_spec("int8")])
    q = stack.serve(model)
    x = torch.randint(0, tok.get_vocab_size(), (1, 8))
    ref, out = model(x)[0], q(x)[0]
    assert torch.allclose(ref, out, atol=0.05, rtol=0.05)
    assert stack.applied[0]["info"]["kernel"] in ("int8pack", "fbgemm")


def test_torch_compile_trains_for_real(tiny_corpus):
    # The seed report's headline optimization, through its converter: inductor compiles the training step and the
    # loss follows eager's.
    _, tok, train_ids, val_ids = tiny_corpus
    cfg = GPTConfig(vocab_size=tok.get_vocab_size(), block_size=16, n_layer=1, n_head=2, d_model=16)
    eager, _ = train(cfg, loop(6), OptimizationSettings(), train_ids, val_ids)
    compiled, _ = train(cfg, loop(6), OptimizationSettings.of(compile=True), train_ids, val_ids)
    assert [c["name"] for c in compiled.applied] == ["compile"]
    assert compiled.losses == pytest.approx(eager.losses, rel=1e-3)
    assert compiled.step_times[0] > 5 * max(compiled.step_times[2:])  # the first step compiled


def test_a_file_missing_on_this_node_loads_from_what_the_job_shipped(tmp_path, monkeypatch):
    # On another node the driver's path does not exist: the class comes from the job's working_dir (relpath) or the
    # module Ray's py_modules shipped (importable by the file's stem), and only if its sha256 is the driver's.
    from phase2_ray.core.plugins import PluginError, load_class

    src = write(tmp_path, "shipme.py", "class Ship:\n    def serve(self, model):\n        return model\n")
    spec = resolve(f"{src}:Ship")
    gone = {**spec, "use": f"{tmp_path / 'elsewhere' / 'shipme.py'}:Ship"}
    monkeypatch.syspath_prepend(str(tmp_path))  # what py_modules does on the node
    assert load_class(gone).__name__ == "Ship"
    wd = tmp_path / "wd" / "opt"
    wd.mkdir(parents=True)
    (wd / "shipme.py").write_text(src.read_text())
    monkeypatch.chdir(tmp_path / "wd")  # a job's working_dir, with the file at its relative path
    rel = {**gone, "source": {**spec["source"], "relpath": "opt/shipme.py"}}
    assert load_class(rel).__name__ == "Ship"
    src.write_text(src.read_text() + "# edited\n")  # another file under the same name: refused
    sys.modules.pop("shipme", None)
    with pytest.raises(PluginError, match="is not the converter file"):
        load_class(gone)
