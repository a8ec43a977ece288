"""Check a startup kit's signatures file by file, naming every file that fails."""

from __future__ import annotations

import json
from pathlib import Path

SIGNATURE_FILE = "signature.json"


def verify_kit(kit: str | Path) -> tuple[list[str], list[str]]:
    """Return (problems, checked folders) for a kit; no problems means every signed file is intact."""
    from nvflare.lighter.utils import load_crt, verify_content

    kit = Path(kit)
    root_ca = kit / "startup" / "rootCA.pem"
    if not root_ca.is_file():
        return [f"{root_ca}: missing; this is not a FLARE startup kit"], []
    public_key = load_crt(str(root_ca)).public_key()
    problems, checked = [], []
    for sig_file in sorted(kit.rglob(SIGNATURE_FILE)):
        folder = sig_file.parent
        checked.append(str(folder.relative_to(kit)))
        signatures = json.loads(sig_file.read_text())
        present = {p.name for p in folder.iterdir()} - {SIGNATURE_FILE}
        for name in sorted(present):
            rel = (folder / name).relative_to(kit)
            if name not in signatures:
                problems.append(f"{rel}: not signed (added after provisioning)")
                continue
            content = name.encode() if (folder / name).is_dir() else (folder / name).read_bytes()
            try:
                verify_content(content=content, signature=signatures[name], public_key=public_key)
            except Exception:
                problems.append(f"{rel}: signature does not match (file changed after provisioning)")
        problems += [f"{(folder / n).relative_to(kit)}: signed but missing" for n in sorted(set(signatures) - present)]
    if not checked:
        problems.append(f"{kit}: no {SIGNATURE_FILE} found; FLARE signs kits provisioned with HEBuilder")
    return problems, checked
