"""A run folder read for the report: the run record (runrecord.py) and any baselines beside it."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from consortium import constants as C
from consortium import runrecord as R
from consortium.report.alone import alone_results

BASELINE_KINDS = ("local", "pooled")  # files `consortium baseline KIND` writes: {"job", "results"}


class ReportError(ValueError):
    """The run folder cannot be reported on; the message says what to run first."""


@dataclass
class Run:
    folder: Path
    history: R.RunRecord
    local: dict | None = None  # baselines: {trained_on: {"scores": {site: x}}}
    pooled: dict | None = None
    baseline_dir: Path | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def meta(self) -> R.RunMeta:
        return self.history.get(R.META) or {}

    @property
    def rounds(self) -> list[R.RoundEntry]:
        return self.history.get(R.ROUNDS) or []

    @property
    def job(self) -> str:
        return str(self.meta.get(R.Meta.JOB, self.folder.name))

    @property
    def metric(self) -> str:
        if self.meta.get(R.Meta.METRIC):
            return self.meta[R.Meta.METRIC]
        try:
            from consortium.tasks import get_task

            return getattr(get_task(self.history.get(R.TASK, "seg2d")), "METRIC_NAME", "score")
        except (ValueError, TypeError):
            return "score"

    @property
    def sites(self) -> list[str]:
        names = set(self.history.get(R.FINAL) or {})
        for r in self.rounds:
            names |= set(r.get(R.Round.SITES) or {})
        return sorted(names)

    def final_score(self, site: str, key: str = C.METRIC_SCORE) -> float | None:
        return ((self.history.get(R.FINAL) or {}).get(site) or {}).get(key)

    def local_score(self, trained_on: str, data_of: str) -> float | None:
        """The score of the model trained at `trained_on` alone, on `data_of`'s validation data."""
        return ((self.local or {}).get(trained_on) or {}).get("scores", {}).get(data_of)


def load_run(folder: Path, baselines: Path | None = None) -> Run:
    folder = Path(folder)
    try:
        history = R.read(folder)
    except R.RecordError as exc:
        raise ReportError(str(exc)) from None
    if not history.get(R.ROUNDS):
        raise ReportError(
            f"{folder / R.FILE} has no finished round: the job failed or is still running (`consortium status`)"
        )
    run = Run(folder=folder, history=history)
    run.baseline_dir = Path(baselines) if baselines else folder.parent / "baselines"
    for kind in BASELINE_KINDS:
        file = run.baseline_dir / f"{kind}.json"
        if file.is_file():
            data = json.loads(file.read_text())
            results = data.get("results") or {}
            for res in results.values():  # files written before the key was task-neutral call it "dice"
                if "scores" not in res and "dice" in res:
                    res["scores"] = res["dice"]
            setattr(run, kind, results)
            if data.get("job") and data.get("job") != run.meta.get(R.Meta.JOB, data.get("job")):
                run.notes.append(f"the {kind} baseline was trained with the settings of job '{data['job']}'")
    if run.local is None:  # the job's own train_alone models (the base job trains them; see alone.py)
        run.local = alone_results(history)
    return run
