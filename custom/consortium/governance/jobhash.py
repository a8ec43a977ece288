"""The hash a hospital approves an exact job by (site config `approved_jobs:`), as Fed-BioMed nodes approve a
training plan by the hash of its code.

Sites run the reviewed, installed `consortium` package and jobs ship no code, so what a job makes a site do is
its FLARE app (the configs of its site and server parts, any file in them such as a public start) and the
package version that interprets it. The hash covers exactly that, plus the purpose and agreement version the
job declares: SHA-256 over the canonical JSON of {package, purpose, agreement, files: {path: SHA-256}}. Each
hospital's kit computes it from the app bytes it receives (gate.py); `consortium job hash NAME` computes it from
the exported job, so the two agree when the job is the one approved.

Canonical app configs: JSON parsed and written with sorted keys; FLARE writes a filter's `tasks` in set order
(it differs between processes), so those lists are sorted; `resume_from` (the id of the job a resumed job
continues) is left out: a resumed job is the same job."""

from __future__ import annotations

import hashlib
import io
import json
import zipfile
from pathlib import Path, PurePosixPath

SKIPPED = {".__nvfl_sig.json", ".__nvfl_submitter.crt"}  # FLARE's job signature files (nvflare.lighter.tool_consts)
UNHASHED_ARGS = ("resume_from",)


def package_version() -> str:
    """`consortium <version>` of the installed package (what a site's kit runs the job with)."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return f"consortium {version('consortium')}"
    except PackageNotFoundError:  # run from a source tree without `pip install -e .`
        return "consortium (not installed)"


def _canonical(value, key: str = ""):
    if isinstance(value, dict):
        return {k: _canonical(v, k) for k, v in value.items() if not (k in UNHASHED_ARGS and key == "args")}
    if isinstance(value, list):
        items = [_canonical(v) for v in value]
        return sorted(items) if key == "tasks" and all(isinstance(v, str) for v in items) else items
    return value


def canonical_bytes(path: str, content: bytes) -> bytes:
    """A file's bytes as hashed: app configs (JSON) canonical, anything else as it is."""
    if not path.endswith(".json"):
        return content
    try:
        parsed = json.loads(content)
    except (ValueError, UnicodeDecodeError):
        return content
    return json.dumps(_canonical(parsed), sort_keys=True, separators=(",", ":")).encode()


def _keep(path: str) -> bool:
    return PurePosixPath(path).name not in SKIPPED


def _relative(name: str) -> str:
    parts = [p for p in PurePosixPath(name.replace("\\", "/")).parts if p not in ("/", ".")]
    return "/".join(parts)


def app_files_from_zip(data: bytes) -> dict[str, bytes]:
    """The files of an app as FLARE deploys it to a site (the zipped app folder)."""
    with zipfile.ZipFile(io.BytesIO(data)) as z:
        return {_relative(i.filename): z.read(i) for i in z.infolist() if not i.is_dir() and _keep(i.filename)}


def app_files_from_dir(folder: str | Path) -> dict[str, bytes]:
    folder = Path(folder)
    return {p.relative_to(folder).as_posix(): p.read_bytes() for p in sorted(folder.rglob("*"))
            if p.is_file() and _keep(p.name)}  # fmt: skip


def job_sha256(files: dict[str, bytes], *, purpose: str, agreement: str, package: str | None = None) -> str:
    """The job hash of an app's `files`, its declared purpose and agreement version, and `package` (default: the
    installed package's version)."""
    digests = {path: hashlib.sha256(canonical_bytes(path, content)).hexdigest() for path, content in files.items()}
    body = {"package": package or package_version(), "purpose": purpose, "agreement": str(agreement),
            "files": dict(sorted(digests.items()))}  # fmt: skip
    return hashlib.sha256(json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()


def site_app(job_folder: str | Path) -> Path:
    """The app folder of an exported job that FLARE deploys to the sites (meta.json's deploy_map)."""
    job_folder = Path(job_folder)
    deploy_map = json.loads((job_folder / "meta.json").read_text()).get("deploy_map") or {}
    apps = [app for app, sites in deploy_map.items() if any(s != "server" for s in sites)]
    if len(apps) != 1:
        raise ValueError(f"{job_folder}/meta.json: expected one app for the sites, got {apps or 'none'}")
    return job_folder / apps[0]


def exported_job_sha256(job_folder: str | Path, *, purpose: str, agreement: str) -> str:
    """The job hash of an exported job folder, as a site's kit computes it when the job is deployed there."""
    return job_sha256(app_files_from_dir(site_app(job_folder)), purpose=purpose, agreement=agreement)
