"""The layer order of README's "Layout" table, enforced: a module may import its own layer and the
layers below it, never above (every import counts, also those inside functions). Layers 1-4 never
import verl, except layer 4's use of verl's ``core_algos`` (the advantage estimators' registry)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "verl_trace"

# Module (or package) -> layer; the longest matching prefix decides. Keep README's table in step.
LAYERS = {
    "verl_trace": 0,  # __init__: the version, nothing else
    "verl_trace.extras": 0,  # which pip extra brings which optional package (stdlib only)
    "verl_trace.gcfreeze": 0,  # the start-up gc.freeze() of the rollout worker and the planner benchmark (stdlib only)
    "verl_trace.tree": 1,
    "verl_trace.config": 1,  # the trace: schema (pydantic)
    "verl_trace.protocol": 1,  # the wire format between rollout and trainer (pydantic, tree)
    "verl_trace.predictor": 2,  # predictors, featurizers, the predictor service (Ray actor)
    "verl_trace.allocation": 3,
    "verl_trace.advantage": 4,
    "verl_trace.metrics": 4,
    "verl_trace.plugin": 5,  # verl's plugin entry point: the estimators and, with VERL_TRACE_CPU, the CPU platform
    "verl_trace.rollout": 5,
    "verl_trace.cpu": 5,  # verl's cpu platform and the hf rollout backend (VERL_TRACE_CPU)
    "verl_trace.trainer": 6,
    "verl_trace.main_trace": 6,
    "verl_trace.__main__": 6,  # python -m verl_trace doctor
    "verl_trace.tools": 7,
    "verl_trace.rewards": 7,
    "verl_trace.tasks": 7,  # task objects: tools config, reward, data, scripted teacher (bfcl, math)
    "verl_trace.testing": 7,  # scripted policy, arithmetic toy task, tiny model: tests and the demo
    "verl_trace.demo": 8,
    "verl_trace.demo.family": 8,  # what the demo's job needs from its task (search, or a task family)
    "verl_trace.demo.task_family": 8,  # --task bfcl|math: a verl_trace.tasks Task adapted to the tiny model
    "verl_trace.cpu.prepare": 8,  # the CPU run's assets: the demo's world, model and warm start
    "verl_trace.cpu.job": 8,  # main_trace on CPU as a child process, for drivers (demo, tests)
    "verl_trace.cpu.run": 8,  # python -m verl_trace.cpu.run
}
CORE_ALGOS = "verl.trainer.ppo.core_algos"


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer(module: str) -> int:
    best = max((p for p in LAYERS if module == p or module.startswith(p + ".")), key=len, default=None)
    if best is None:
        raise AssertionError(f"{module} has no layer: add it to LAYERS here and to README's Layout table")
    return LAYERS[best]


def is_module(name: str) -> bool:
    rel = Path(*name.split("."))
    return (PACKAGE.parent / rel).with_suffix(".py").is_file() or (PACKAGE.parent / rel / "__init__.py").is_file()


def imports(path: Path, source: str | None = None) -> list[tuple[int, str]]:
    """(line, absolute module) of every import in ``path`` (or in ``source``, as if it were that
    file); ``from pkg import name`` gives ``pkg.name`` (for our own modules only when ``name`` is a
    submodule)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = []
    for node in ast.walk(ast.parse(path.read_text() if source is None else source, str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                ours = base == "verl_trace" or base.startswith("verl_trace.")
                out.append((node.lineno, sub if not ours or is_module(sub) else base))
    return out


MODULES = sorted(PACKAGE.rglob("*.py"))


def test_every_module_has_a_layer():
    for path in MODULES:
        layer(module_name(path))


def violations(paths, source: str | None = None) -> list[str]:
    out = []
    for path in paths:
        me = module_name(path)
        mine = layer(me)
        for line, target in imports(path, source):
            where = f"{path.relative_to(PACKAGE.parent)}:{line}: {me} (layer {mine}) imports {target}"
            if target == "verl_trace" or target.startswith("verl_trace."):
                if layer(target) > mine:
                    out.append(f"{where} (layer {layer(target)})")
            elif mine <= 4 and (target == "verl" or target.startswith("verl.")) and not (mine == 4 and target == CORE_ALGOS):
                out.append(f"{where}: layers 1-4 never import verl (layer 4 only {CORE_ALGOS})")
    return out


def test_imports_point_down_the_layers():
    assert violations(MODULES) == []


def test_the_check_sees_violations():
    """The walk resolves relative, submodule and function-level imports: a module of layer 3 that
    imports the rollout layer and verl's agent loop inside a function is caught twice."""
    probe = "def f():\n    from ..rollout import runner\n    import verl.experimental.agent_loop\n"
    found = violations([PACKAGE / "allocation" / "probe.py"], source=probe)
    assert len(found) == 2 and "imports verl_trace.rollout.runner (layer 5)" in found[0], found
    assert "imports verl.experimental.agent_loop" in found[1]
    assert "verl_trace.predictor.service" in {t for _, t in imports(PACKAGE / "rollout" / "worker.py")}


def test_layers_one_to_four_load_no_verl_machinery():
    """Importing every module of layers 1-4 loads nothing of verl (``core_algos`` is imported only
    when the estimators are registered), so they stay fast to import and to test."""
    low = [module_name(p) for p in MODULES if 1 <= layer(module_name(p)) <= 4 and module_name(p) != "verl_trace.plugin"]
    code = (
        "import importlib, sys\n"
        f"for m in {low!r}: importlib.import_module(m)\n"
        "print(sorted(m for m in sys.modules if m == 'verl' or m.startswith('verl.')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_the_trainer_path_needs_no_extra():
    """What ``pip install verl-trace`` (no extras) must run, the verl trainer path, loads none of
    the extras' packages; a missing extra fails naming the pip line (verl_trace.extras)."""
    import tomllib

    from verl_trace.extras import EXTRAS, require_extra

    # fastapi, uvicorn (verl-core), aiohttp (ray[default]) and rich (verl imports it) come with verl anyway
    optional = sorted({m for mods in EXTRAS.values() for m in mods} - {"fastapi", "uvicorn", "aiohttp", "rich"})
    code = (
        "import sys\n"
        "import verl_trace.plugin, verl_trace.main_trace, verl_trace.trainer.trainer, verl_trace.rollout.worker\n"
        f"print(sorted(m for m in {optional!r} if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "[]", out
    declared = tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert set(EXTRAS) <= set(declared)
    try:
        require_extra("search", "the probe", modules=("no_such_module_for_verl_trace",))
    except ImportError as e:
        assert "pip install 'verl-trace[search]'" in str(e) and "no_such_module_for_verl_trace" in str(e)
    else:
        raise AssertionError("require_extra did not raise")
