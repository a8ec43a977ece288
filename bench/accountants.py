"""Benchmark: the noise multiplier each accountant needs for a target epsilon, and how long it takes to find.

Usage: python bench/accountants.py [--rates 0.05 0.1 0.25] [--steps 30 100 300] [--epsilons 1 2 8] [--delta 1e-5]
                                   [--old-commit 2887ad0]
Columns: our own RDP analysis as it was before issue 17 part 3 (read from git at --old-commit; skipped if git
cannot show it), Opacus's RDP accountant through consortium.privacy.accountant (methods=("rdp",)), and the
default (the tighter of Opacus RDP and PRV, with the accountant that won). Times are one noise search each,
from a cold cache, on a shared 2-core machine: rough.
"""

from __future__ import annotations

import argparse
import subprocess
import time
import types
import warnings
from pathlib import Path

from consortium.privacy import accountant

ROOT = Path(__file__).resolve().parents[1]
OLD_PATH = "custom/consortium/privacy/accountant.py"


def _old_module(commit: str):
    """Our former RDP code, loaded from git so the comparison survives its removal."""
    try:
        source = subprocess.run(
            ["git", "show", f"{commit}:{OLD_PATH}"], cwd=ROOT, check=True, capture_output=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        return None
    module = types.ModuleType("old_accountant")
    exec(compile(source, f"{commit}:{OLD_PATH}", "exec"), module.__dict__)  # our own code from our own history
    return module


def _timed(fn, **kwargs):
    accountant.spent.cache_clear()
    start = time.perf_counter()
    value = fn(**kwargs)
    return value, time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rates", type=float, nargs="+", default=[0.05, 0.1, 0.25])
    parser.add_argument("--steps", type=int, nargs="+", default=[30, 100, 300])
    parser.add_argument("--epsilons", type=float, nargs="+", default=[1, 2, 8])
    parser.add_argument("--delta", type=float, default=1e-5)
    parser.add_argument("--old-commit", default="2887ad0")
    args = parser.parse_args()
    warnings.filterwarnings("ignore", message="Optimal order")
    old = _old_module(args.old_commit)
    print(f"delta {args.delta:g}; noise multiplier (seconds to find it); saved = 1 - tighter / Opacus RDP\n")
    print("| sample rate | steps | target eps | our old RDP | Opacus RDP | tighter (accountant) | saved |")
    print("|---|---|---|---|---|---|---|")
    for q in args.rates:
        for steps in args.steps:
            for eps in args.epsilons:
                common = dict(target_epsilon=eps, delta=args.delta, sample_rate=q, steps=steps)
                if old is not None:
                    sigma_old, t_old = _timed(old.noise_for_target, **common)
                    old_cell = f"{sigma_old:.3f} ({t_old:.2f} s)"
                else:
                    old_cell = "n/a"
                sigma_rdp, t_rdp = _timed(accountant.noise_for_target, methods=("rdp",), **common)
                sigma, t_best = _timed(accountant.noise_for_target, **common)
                print(
                    f"| {q:g} | {steps} | {eps:g} | {old_cell} | {sigma_rdp:.3f} ({t_rdp:.2f} s) | "
                    f"{sigma:.3f} {sigma.accountant} ({t_best:.2f} s) | {1 - sigma / sigma_rdp:.1%} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
