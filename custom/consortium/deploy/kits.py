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
    if not checked:  # a kit built by the hospital itself (distributed provisioning) carries no signatures
        return verify_certificates(kit, root_ca)
    return problems, checked


def verify_certificates(kit: Path, root_ca: Path) -> tuple[list[str], list[str]]:
    """For an unsigned kit: every certificate in startup/ is issued by the kit's root CA, and the private key
    beside it (if any) belongs to it."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import padding

    ca_key = x509.load_pem_x509_certificate(root_ca.read_bytes()).public_key()
    problems, checked = [], []
    for crt in sorted((kit / "startup").glob("*.crt")):
        rel = crt.relative_to(kit)
        cert = x509.load_pem_x509_certificate(crt.read_bytes())
        try:
            ca_key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), cert.signature_hash_algorithm)
        except Exception:
            problems.append(f"{rel}: not issued by this kit's root CA (startup/rootCA.pem)")
        key = crt.with_suffix(".key")
        if key.is_file():
            private = serialization.load_pem_private_key(key.read_bytes(), password=None)
            if private.public_key().public_numbers() != cert.public_key().public_numbers():
                problems.append(f"{key.relative_to(kit)}: does not belong to {rel}")
        checked.append(f"{rel} (certificate chain and key)")
    if not checked:
        problems.append(f"{kit}: no {SIGNATURE_FILE} and no certificate in startup/: not a FLARE startup kit")
    return problems, checked
