"""A run folder as the report reads it: metrics.json, the job's own train_alone models, optional baselines."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from consortium import constants as C

REPORT_DIR = "report"


class ReportError(ValueError):
    """The run folder cannot be reported on; the message says what to run first."""


@dataclass
class Run:
    folder: Path
    history: dict
    local: dict | None = None  # baselines: {trained_on: {"scores": {site: x}}}
    pooled: dict | None = None
    baseline_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def meta(self) -> dict:
        return self.history.get("meta") or {}

    @property
    def metric(self) -> str:
        if self.meta.get("metric"):
            return self.meta["metric"]
        try:
            from consortium.tasks import get_task

            return getattr(get_task(self.history.get("task", "seg2d")), "METRIC_NAME", "score")
        except (ValueError, TypeError):
            return "score"

    @property
    def sites(self) -> list[str]:
        names = set(self.history.get("final") or {})
        for r in self.history.get("rounds", []):
            names |= set(r.get("sites") or {})
        return sorted(names)

    def final_score(self, site: str, key: str = C.METRIC_SCORE) -> float | None:
        return ((self.history.get("final") or {}).get(site) or {}).get(key)

    def local_score(self, trained_on: str, data_of: str) -> float | None:
        """The score of the model trained at `trained_on` alone, on `data_of`'s validation data."""
        return ((self.local or {}).get(trained_on) or {}).get("scores", {}).get(data_of)


def load_run(folder: Path, baselines: Path | None = None) -> Run:
    folder = Path(folder)
    path = folder / C.METRICS_FILE
    if not path.is_file():
        raise ReportError(
            f"{path} not found: run a job first, e.g. `consortium simulate fedavg` or `consortium submit fedavg`"
        )
    try:
        history = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ReportError(f"{path}: not valid JSON ({exc}); run the job again") from None
    if not history.get("rounds"):
        raise ReportError(f"{path} has no finished round: the job failed or is still running (`consortium status`)")
    run = Run(folder=folder, history=history)
    run.baseline_dir = Path(baselines) if baselines else folder.parent / "baselines"
    for kind in ("local", "pooled"):
        file = run.baseline_dir / f"{kind}.json"
        if file.is_file():
            data = json.loads(file.read_text())
            results = data.get("results") or {}
            for res in results.values():  # files written before the key was task-neutral call it "dice"
                if "scores" not in res and "dice" in res:
                    res["scores"] = res["dice"]
            setattr(run, kind, results)
            if data.get("job") and data.get("job") != run.meta.get("job", data.get("job")):
                run.notes.append(f"the {kind} baseline was trained with the settings of job '{data['job']}'")
    if run.local is None:  # the job's own train_alone models (the base job trains them; see report/alone.py)
        from consortium.report.alone import alone_results

        run.local = alone_results(history)
    return run


# -- plots -------------------------------------------------------------------------------------------------
