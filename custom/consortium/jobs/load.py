"""Read `jobs/<name>/job.yaml` over its chain of `base` jobs into a validated JobSpec."""

from __future__ import annotations

from dataclasses import fields
from pathlib import Path

from consortium.config import ConfigError, read_yaml_mapping
from consortium.jobs.spec import JobSpec

JOB_FILE = "job.yaml"
# keys that moved: the job file says where they live now
MOVED = {"he_encrypt_layers": "write `he: {encrypt_layers: [regex, ...]}` instead (he: true encrypts every layer)"}


def _read(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"job definition {path} not found")
    return read_yaml_mapping(path)


def available_jobs(jobs_dir: Path) -> list[str]:
    return sorted(p.parent.name for p in Path(jobs_dir).glob(f"*/{JOB_FILE}"))


def load_job_spec(name: str, jobs_dir: str | Path, charter=None) -> JobSpec:
    """Resolve `jobs/<name>/job.yaml` over its chain of `base` jobs, parse and validate it; with the consortium's
    `charter` (governance/charter.py) also its purpose and agreement version against it."""
    jobs_dir = Path(jobs_dir)
    if not (jobs_dir / name / JOB_FILE).is_file():
        known = ", ".join(available_jobs(jobs_dir)) or "none"
        raise ConfigError(f"unknown job '{name}': no {jobs_dir / name / JOB_FILE} (available jobs: {known})")
    chain, merged, current = [], {}, name
    while current:
        if current in chain:
            raise ConfigError(f"{jobs_dir / name / JOB_FILE}: 'base' chain loops: {' -> '.join(chain + [current])}")
        chain.append(current)
        raw = _read(jobs_dir / current / JOB_FILE)
        current = raw.pop("base", None)
        merged = {**raw, **merged}
    source = jobs_dir / name / JOB_FILE
    known = {f.name for f in fields(JobSpec)}
    unknown = sorted(set(merged) - known)
    if unknown:
        fix = MOVED.get(unknown[0], f"Allowed: base, {', '.join(sorted(known))}")
        raise ConfigError(f"{source}: field '{unknown[0]}': unknown key. {fix}")
    merged.pop("name", None)
    try:
        spec = JobSpec(name=name, **merged)
    except ConfigError as exc:
        raise ConfigError(f"{source}: {exc}") from None
    spec.validate(source)
    if charter is not None:
        check_charter(spec, charter, source)
    return spec


def check_charter(spec: JobSpec, charter, source: Path | str) -> None:
    """The job's purpose is one of the charter's (a typo gets 'did you mean') and its agreement is the charter's."""
    for field, problem in (("purpose", charter.purpose_problem(spec.purpose)),
                           ("agreement", charter.agreement_problem(spec.agreement))):  # fmt: skip
        if problem:
            raise ConfigError(f"{source}: field '{field}': {problem}")
