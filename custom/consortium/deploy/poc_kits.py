"""POC kits reused while nothing they are made from has changed: a pristine copy of the prepared POC workspace
and a content hash of its inputs (project.yml, consortium.yaml, every site config file, nvflare's version and
the package code that writes the kits), so `poc up` provisions again only when one of them changed.

A reused consortium starts from the same state as a new one: the copy is taken right after `nvflare poc
prepare`, before any process ran, so job storage, logs, audit trails and privacy ledgers start empty either way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from importlib import metadata
from pathlib import Path

import consortium

# the package folders whose code decides what a kit contains (kit builder, roles, policies, charter gate, audit
# trail, site config parsing) and the constants they use; a change there must reach the kits too
KIT_CODE = ("deploy", "governance", "audit_trail", "config", "constants.py")


def _digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _files_digest(paths: list[Path], root: Path) -> str:
    h = hashlib.sha256()
    for path in sorted(paths):
        h.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()


def kit_inputs(project_yml: Path, consortium_file: Path, site_configs: Path) -> dict[str, str]:
    """Name -> sha256 of everything the POC kits are made from. One entry per site config file, so that the
    message can name the file that changed."""
    consortium_file, folder = Path(consortium_file).resolve(), Path(site_configs).resolve()
    inputs = {"project.yml": _digest(project_yml.read_bytes())}
    inputs[str(consortium_file)] = _digest(consortium_file.read_bytes())
    for path in sorted(p for p in folder.rglob("*") if p.is_file() and "__pycache__" not in p.parts):
        inputs[str(folder / path.relative_to(folder))] = _digest(path.read_bytes())
    inputs["nvflare"] = metadata.version("nvflare")
    package = Path(consortium.__file__).parent
    code = [p for name in KIT_CODE for p in ((package / name).rglob("*.py") if (package / name).is_dir()
                                             else [package / name])]  # fmt: skip
    inputs["kit code (consortium/" + ", ".join(KIT_CODE) + ")"] = _files_digest(code, package)
    return inputs


def combined(inputs: dict[str, str]) -> str:
    return _digest(json.dumps(inputs, sort_keys=True).encode())


class KitCache:
    """The pristine POC workspace (`kits/`) and its stamp (`kits.json`: hash, inputs, when provisioned)
    beside the live one under a consortium's root folder."""

    def __init__(self, root: Path):
        self.copy, self.stamp = root / "kits", root / "kits.json"

    def read(self) -> dict | None:
        try:
            stamp = json.loads(self.stamp.read_text())
        except (OSError, ValueError):
            return None
        return stamp if self.copy.is_dir() and isinstance(stamp, dict) else None

    def changed(self, inputs: dict[str, str]) -> list[str]:
        """Why the kits must be provisioned again ([] if the cached kits fit `inputs`)."""
        stamp = self.read()
        if stamp is None:
            return ["no kits provisioned yet"]
        if stamp.get("hash") == combined(inputs):
            return []
        old = stamp.get("inputs") or {}
        names = [n for n in inputs if old.get(n) != inputs[n]] + [f"{n} (removed)" for n in old if n not in inputs]
        return [f"{n} changed" for n in names] or ["kit stamp differs"]

    def restore(self, poc: Path) -> str:
        """Replace the POC workspace with the pristine kits; return when they were provisioned."""
        shutil.rmtree(poc, ignore_errors=True)
        shutil.copytree(self.copy, poc, symlinks=True)
        return str(self.read()["provisioned"])

    def ports(self) -> tuple[int, int] | None:
        """The server ports the kits were made for."""
        ports = (self.read() or {}).get("ports")
        return tuple(ports) if isinstance(ports, list) and len(ports) == 2 else None

    def save(self, poc: Path, inputs: dict[str, str], *, ports: tuple[int, int] | None = None) -> None:
        """Keep a pristine copy of the just-prepared POC workspace; the stamp last, so a copy cut short is not
        taken for a complete one."""
        self.stamp.unlink(missing_ok=True)
        shutil.rmtree(self.copy, ignore_errors=True)
        shutil.copytree(poc, self.copy, symlinks=True)
        provisioned = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime())
        stamp = {"hash": combined(inputs), "inputs": inputs, "provisioned": provisioned, "ports": list(ports or [])}
        self.stamp.write_text(json.dumps(stamp, indent=1))
