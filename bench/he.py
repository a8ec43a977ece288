"""Benchmark: our packed CKKS aggregation vs FLARE's stock per-layer HE path vs plaintext FedAvg.

Usage:
    . .venv/bin/activate
    python bench/he.py                # model tables + simulator rounds (a few minutes on 2 cores)
    python bench/he.py --no-rounds    # model table only
    python bench/he.py --repeat 3     # median of 3 runs per path (the machine may be shared)
    python bench/he.py --runs /tmp/r  # keep the simulator runs' logs and metrics.json

Both HE paths use the same CKKS parameters (poly_modulus_degree 8192, coeff_mod_bit_sizes
[60, 40, 40], scale 2^40, contexts from consortium.he.contexts.write_contexts), 3 sites and the same
per-site weights (STEPS, the demo job's local steps per round), and run the real FLARE components
standalone on a real FLContext + Workspace:
  ours   HEEncryptUpdate (site) -> HESumAggregator (server) -> HEDecryptModel (site)
  quantised  the same with he: {pack: quantised, bits: 8, max_sites: 4, max_weight: 36} (he/quant.py): each
         value an 8-bit integer in its layer's range (2 x the largest value of the model the sites started
         from, here the initial model), 4 per CKKS slot; max_weight 36 = the largest site weight (STEPS);
         a second row with bits: 6 (5 per slot)
  stock  nvflare.app_opt.he: HEModelEncryptor (site, weigh_by_local_iter=True) ->
         HEInTimeAccumulateWeightedAggregator (server, class default weigh_by_local_iter=False) ->
         HEModelDecryptor (site; the flat layers are then reshaped, as a site's learner does).
         The same aggregator with weigh_by_local_iter=True (weights applied again in ciphertext) is
         also tried on the same messages and reported as its own row.
  plain  float32 arrays, consortium.aggregators.weighted.weighted_mean on the server.

Columns (seconds, wall clock, one thread):
  encrypt    site: the task-result filter (ours also turns ciphertexts into bytes here; stock leaves
             CKKSVector objects for FOBS to serialize); plain: none
  serialize  site: fobs.dumps of the task result; "MB/site" is the length of those bytes
  aggregate  server, 3 sites: fobs.loads of the 3 messages, accept, aggregate, fobs.dumps of the result
  decrypt    site: fobs.loads of the global model, the task-data filter (plain: fobs.loads only)
  enc+agg+dec  encrypt + aggregate + decrypt (the targets' measure)
  total      encrypt + serialize + aggregate + decrypt, one site's critical path: the fairer measure,
             since ours turns ciphertexts into bytes inside its filter (encrypt) and stock inside FOBS
             (serialize), so enc+agg+dec charges that work to ours only.
  max err    max abs difference from weighted_mean of the plaintext float32 site models.
A warm-up round on a 4-value model runs first, so loading contexts (once per job) is not timed.
The "full round" section runs the demo job in the simulator, plaintext (fedavg_plain) and encrypted
(fedavg), and compares the mean round time of rounds 1.. (round 0 includes data loading); "outside
tasks" is the round time minus the slowest site's task: HE filters, transfer, aggregation, saving.
"""

from __future__ import annotations

import argparse
import math
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from he_measure import (
    TIMED,
    initial,
    max_error,
    measure_repeated,
    quantised_error,
    site_models,
    stock_wire,
    try_aggregate,
    warm_up,
)
from he_paths import CKKS, SITES, STEPS, Ours, Plain, Quantised, Stock, make_kit
from he_rounds import full_rounds
from nvflare.app_common.decomposers import common_decomposers
from nvflare.app_opt.he import decomposers as he_decomposers

from consortium.aggregators.weighted import weighted_mean
from consortium.tasks.seg2d import build_model

MODELS = {"demo UNet": {}, "UNet 28..448": {"channels": (28, 56, 112, 224, 448)}}  # about 0.4 M and 5 M


# -- tables -----------------------------------------------------------------------------------------------

W = 44  # label column
HEADER = (
    f"{'path':{W}s} {'encrypt':>8s} {'serialize':>9s} {'MB/site':>8s} {'aggregate':>9s} "
    f"{'decrypt':>8s} {'enc+agg+dec':>11s} {'total':>8s} {'max err':>8s}"
)


def core(r: dict) -> float:
    """encrypt + aggregate + decrypt"""
    return r["enc"] + r["agg"] + r["dec"]


def total(r: dict) -> float:
    """encrypt + serialize + aggregate + decrypt"""
    return sum(r[k] for k in TIMED)


def row(label: str, r: dict, err: float | None) -> str:
    cells = [f"{r['enc']:8.3f}", f"{r['ser']:9.3f}", f"{r['bytes'] / 1e6:8.2f}"]
    if r.get("failure"):
        return f"{label:{W}s} {' '.join(cells)}  FAILED after {r['agg']:.2f} s: {r['failure']}"
    cells += [f"{r['agg']:9.3f}", f"{r['dec']:8.3f}", f"{core(r):11.3f}", f"{total(r):8.3f}", f"{err:8.1e}"]
    return f"{label:{W}s} {' '.join(cells)}"


def bench_model(paths: dict, label: str, model: torch.nn.Module, repeat: int) -> dict:
    """Run the three paths on one model, print its table; return the ratios the targets need."""
    sites = site_models(model)
    want = {k: v.astype(np.float64) for k, v in weighted_mean(sites, list(STEPS)).items()}
    n_params = sum(v.size for v in sites[0].values())
    paths["quantised"].reference = paths["quantised6"].reference = initial(model)
    names = ("ours", "quantised", "quantised6", "stock", "plain")
    res = {name: measure_repeated(paths[name], sites, repeat) for name in names}
    weighted = {**res["stock"], **try_aggregate(paths["stock_weighted"](), res["stock"]["blobs"])}
    err = {name: max_error(r["out"], want) for name, r in res.items()}
    print(f"\n{label}: {n_params / 1e6:.2f} M parameters in {len(sites[0])} tensors, {len(SITES)} sites")
    print(HEADER)
    print(row("ours (packed, weight in ciphertext)", res["ours"], err["ours"]))
    print(row("ours quantised (8 bits, 4 per slot)", res["quantised"], err["quantised"]))
    print(row("ours quantised (6 bits, 5 per slot)", res["quantised6"], err["quantised6"]))
    print(row("stock (aggregator weigh_by_local_iter=False)", res["stock"], err["stock"]))
    print(row("stock (aggregator weigh_by_local_iter=True)", weighted, None))
    print(row("plain (float32 arrays, FOBS)", res["plain"], err["plain"]))
    n_ct, ct_bytes, ctx_bytes = stock_wire(res["stock"]["blobs"][0])
    ours_ct = math.ceil(n_params / (CKKS["poly_modulus_degree"] // 2))
    print(
        f"  ciphertexts per site: ours {ours_ct}, stock {n_ct}; stock message = {ct_bytes / 1e6:.1f} MB "
        f"ciphertext + {ctx_bytes / 1e6:.1f} MB of context copies (one per layer)"
    )
    ours, stock, plain = res["ours"], res["stock"], res["plain"]
    ratios = {"bytes": ours["bytes"] / stock["bytes"], "speedup": core(stock) / core(ours), "err": err["ours"]}
    fp32 = 4 * n_params  # the update's float32 bytes (integer buffers counted as 4 bytes too)
    ratios["quantised_fp32"] = res["quantised"]["bytes"] / fp32
    ratios["quantised6_fp32"] = res["quantised6"]["bytes"] / fp32
    ratios["quantised_err"] = err["quantised"]
    for name, bits in (("quantised", 8), ("quantised6", 6)):
        print(f"  quantised {bits} bits: " + quantised_error(res[name], want, paths[name].settings))
    print(
        f"  bytes per site / fp32 bytes of the update ({fp32 / 1e6:.2f} MB): ours {ours['bytes'] / fp32:.2f}x, "
        f"quantised 8 bits {ratios['quantised_fp32']:.2f}x, 6 bits {ratios['quantised6_fp32']:.2f}x, "
        f"stock {stock['bytes'] / fp32:.1f}x, plain message "
        f"{plain['bytes'] / fp32:.2f}x"
    )
    print(
        f"  our bytes / stock bytes = {ratios['bytes']:.2f}; stock / ours: enc+agg+dec {ratios['speedup']:.2f}x, "
        f"total {total(stock) / total(ours):.2f}x; ours / plain: total {total(ours) / total(plain):.0f}x, "
        f"bytes {ours['bytes'] / plain['bytes']:.1f}x"
    )
    return ratios


def check(label: str, value: float, ok: bool) -> None:
    print(f"  {label:58s} {value:10.3g}   {'met' if ok else 'NOT met'}")


def bench_models(root: Path, repeat: int) -> dict:
    """The model tables; returns each model's ratios."""
    print(f"CKKS {CKKS}; sites {dict(zip(SITES, STEPS, strict=True))} (weights = local steps); times in seconds")
    paths = {"ours": Ours(root), "quantised": Quantised(root), "quantised6": Quantised(root, bits=6),
             "stock": Stock(root), "plain": Plain()}  # fmt: skip
    paths["quantised"].reference = paths["quantised6"].reference = {"w": np.full(4, 0.2, dtype=np.float32)}
    warm_up(list(paths.values()))  # the same instances run the benchmark
    paths["stock_weighted"] = lambda: Stock(root, server_weighs=True)  # a fresh one per try: a failure leaves state
    summary = {}
    for label, kwargs in MODELS.items():
        torch.manual_seed(0)
        summary[label] = bench_model(paths, label, build_model(**kwargs), repeat)
    return summary


def targets(summary: dict, round_ratio: float | None) -> None:
    demo = summary["demo UNet"]
    print("\ntargets")
    check("our bytes <= 0.5x stock (demo UNet)", demo["bytes"], demo["bytes"] <= 0.5)
    for label, r in summary.items():
        check(f"our enc+agg+dec >= 1.5x faster than stock ({label})", r["speedup"], r["speedup"] >= 1.5)
    if round_ratio is not None:
        check("HE round <= 1.5x plaintext round", round_ratio, round_ratio <= 1.5)
    for label, r in summary.items():
        check(f"our max abs error <= 1e-4 ({label})", r["err"], r["err"] <= 1e-4)
    for label, r in summary.items():
        for key, bits in (("quantised_fp32", 8), ("quantised6_fp32", 6)):
            check(f"quantised {bits} bits: bytes <= 2x the fp32 update ({label})", r[key], r[key] <= 2)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-rounds", action="store_true", help="skip the full-round simulator comparison")
    parser.add_argument("--repeat", type=int, default=1, help="runs per path; timings are medians")
    parser.add_argument("--rounds", type=int, default=3, help="simulator rounds (the first is not counted)")
    parser.add_argument("--plain-job", default="fedavg_plain", help="plaintext job (he: false)")
    parser.add_argument("--he-job", default="fedavg", help="encrypted job (he: true)")
    parser.add_argument("--runs", type=Path, help="keep the simulator runs (logs, metrics) here; default: temporary")
    args = parser.parse_args()
    torch.set_num_threads(1)
    common_decomposers.register(), he_decomposers.register()
    with tempfile.TemporaryDirectory(prefix="he-bench-") as tmp:  # the kit holds a secret key: removed at exit
        summary = bench_models(make_kit(Path(tmp) / "kit"), args.repeat)
        rounds_dir = args.runs or Path(tmp) / "rounds"
        round_ratio = None if args.no_rounds else full_rounds(args.plain_job, args.he_job, args.rounds, rounds_dir)
    targets(summary, round_ratio)
    return 0


if __name__ == "__main__":
    sys.exit(main())
