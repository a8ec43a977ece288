"""The tables of bench/evaluation.py: every model's score per site, averaged over seeds, and the issue's two
targets (the global model within 0.02 of pooled training; better than each site alone on the others' data)."""

from __future__ import annotations

POOLED = "pooled data (reference)"


def mean(values) -> float:
    values = list(values)
    return sum(values) / len(values)


def shown_label(row: dict) -> str:
    """A row's label, with the number of seeds behind it for averaged rows."""
    return f"{row['label']} [n={row['n']}]" if "n" in row else row["label"]


def print_table(title: str, rows: list[dict], key: str, names: list[str]) -> None:
    shown = [r for r in rows if r.get(key)]
    if not shown:
        return
    print(f"\n{title}")
    print(f"{'model':48s} " + " ".join(f"{n:>11s}" for n in names) + f" {'mean':>7s} {'seconds':>8s}")
    for row in shown:
        scores = row[key]
        secs = f"{row['seconds']:8.1f}" if row.get("seconds") else f"{'':8s}"
        line = " ".join(f"{scores[n]:11.3f}" for n in names)
        print(f"{shown_label(row):48s} {line} {mean(scores[n] for n in names):7.3f} {secs}")


def print_targets(rows: list[dict], key: str, names: list[str], where: str) -> None:
    pooled = next((r[key] for r in rows if r["label"] == POOLED and r.get(key)), None)
    if pooled is None:
        return
    print(f"targets on {where}")
    pooled_mean = mean(pooled[n] for n in names)
    for row in rows:
        if not row.get("federated") or not row.get(key):
            continue
        shared_mean = mean(row[key][n] for n in names)
        gap = pooled_mean - shared_mean
        verdict = "met" if gap <= 0.02 else "NOT met"
        label = shown_label(row)
        print(f"  (1) {label}: mean {shared_mean:.3f} vs pooled {pooled_mean:.3f}: gap {gap:+.3f} ({verdict})")
        for local in rows:
            if not local.get("local") or not local.get(key):
                continue
            site = local["label"].removeprefix("local only: ")
            others = [n for n in names if n != site]
            alone, shared = mean(local[key][n] for n in others), mean(row[key][n] for n in others)
            verdict = "met" if shared > alone else "NOT met"
            print(f"  (2)   on the data of {', '.join(others)}: global {shared:.3f} vs local-only {site} "
                  f"{alone:.3f} ({verdict})")  # fmt: skip


def average(records: list[dict], names: list[str]) -> list[dict]:
    """Per model, the mean score per site over the seeds that have it (n: how many)."""
    by_label: dict[str, list[dict]] = {}
    for record in records:
        for row in record["rows"]:
            by_label.setdefault(row["label"], []).append(row)
    out = []
    for label, rows in by_label.items():
        merged = {k: v for k, v in rows[0].items() if k in ("federated", "local")}
        merged.update(label=label, n=len(rows), seconds=0.0)
        for key in ("val", "test"):
            have = [r[key] for r in rows if r.get(key)]
            merged[key] = {n: mean(s[n] for s in have) for n in names} if have else None
        out.append(merged)
    return out
