"""``python -m verl_trace doctor``: is the plugin installed and loadable, and what is registered."""

from __future__ import annotations

import argparse
import importlib
import importlib.metadata as md
import os
import sys
import traceback


def doctor() -> int:
    ok = True
    print(f"python {sys.version.split()[0]}  ({sys.executable})")
    for dist in ("verl-trace", "verl", "torch", "transformers", "ray"):
        try:
            print(f"  {dist:13s} {md.version(dist)}")
        except md.PackageNotFoundError:
            print(f"  {dist:13s} NOT INSTALLED")
            ok = ok and dist not in ("verl-trace", "verl")
    policy = os.getenv("VERL_USE_EXTERNAL_PLUGINS", "auto")
    print(f"VERL_USE_EXTERNAL_PLUGINS={policy}")
    eps = [ep for ep in md.entry_points(group="verl.plugins") if ep.value.startswith("verl_trace")]
    if not eps:
        print("entry point: MISSING (is verl-trace installed with pip?)")
        ok = False
    for ep in eps:
        try:
            ep.load()
            print(f"entry point: {ep.name} -> {ep.value}: loads")
        except Exception:
            print(f"entry point: {ep.name} -> {ep.value}: FAILS TO LOAD")
            traceback.print_exc()
            ok = False
    try:
        importlib.import_module("verl")
        from verl.trainer.ppo.core_algos import ADV_ESTIMATOR_REGISTRY, get_adv_estimator_fn

        for name in ("trace", "tree_grpo"):
            try:
                fn = get_adv_estimator_fn(name)
                print(f"advantage estimator {name!r}: registered ({fn.__module__}.{fn.__name__})")
            except ValueError as e:
                print(f"advantage estimator {name!r}: NOT REGISTERED ({e})")
                ok = False
        print(f"all estimators: {sorted(ADV_ESTIMATOR_REGISTRY)}")
        from verl.plugin.platform import get_platform

        from . import cpu

        device = get_platform().device_name
        print(f"{cpu.ENV_VAR}={os.getenv(cpu.ENV_VAR, '')!s}: verl's platform is {device!r}")
        if cpu.enabled() and device != "cpu":
            print(f"  {cpu.ENV_VAR} is set but verl's platform is not 'cpu': the plugin did not load first")
            ok = False
    except Exception:
        print("import verl: FAILS")
        traceback.print_exc()
        ok = False
    print("OK" if ok else "PROBLEMS FOUND")
    return 0 if ok else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="verl_trace")
    sub = parser.add_subparsers(dest="cmd", required=True)
    sub.add_parser("doctor", help="check that the verl plugin loads and the estimators are registered")
    args = parser.parse_args(argv)
    if args.cmd == "doctor":
        return doctor()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
