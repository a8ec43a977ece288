"""The CKKS key for distributed kits: one hospital generates it and seals the secret context to each other hospital."""

from __future__ import annotations

from pathlib import Path

from consortium.he.contexts import CLIENT_CONTEXT, DEFAULT_PARAMS, SERVER_CONTEXT, HEContextError, make_contexts
from consortium.he.sealing import SealError, check_site_cert, common_name, key_fingerprint, same_fingerprint

PURPOSE = "ckks-secret-context"


def _kit_files(kit: Path) -> tuple[Path, Path, Path]:
    startup = kit / "startup"
    files = (startup / "client.crt", startup / "client.key", startup / "rootCA.pem")
    missing = [str(f) for f in files if not f.is_file()]
    if missing:
        raise SealError(
            f"{kit}: not a hospital kit (missing {', '.join(missing)}); build it with `consortium site package`"
        )
    if (startup / "signature.json").exists():
        raise SealError(
            f"{kit}: a centrally provisioned kit (signed startup/): its HE context came with it from HEBuilder; "
            "sealed contexts are for kits built with `consortium site package`"
        )
    return files


def _load(kit: Path):
    from nvflare.lighter.utils import load_crt, load_private_key_file

    crt, key, root = _kit_files(kit)
    return load_crt(str(crt)), load_private_key_file(str(key)), load_crt(str(root))


def _context(data: bytes, path: Path):
    import tenseal as ts

    try:
        return ts.context_from(data)
    except Exception as exc:
        raise HEContextError(f"{path}: not a TenSEAL context ({exc})") from None


def _pin(cert, fingerprint: str | None, what: str) -> None:
    if fingerprint is not None and not same_fingerprint(fingerprint, key_fingerprint(cert)):
        raise SealError(
            f"{what} {common_name(cert)!r} has key fingerprint {key_fingerprint(cert)}, not the {fingerprint} you "
            "confirmed with that hospital: do not use it, and ask the consortium how this certificate came about"
        )


def generate(kit: Path, server_out: Path, *, params: dict | None = None, force: bool = False) -> tuple[Path, Path]:
    """Key holder: a fresh CKKS key; the secret context into its own kit, the public one to `server_out`."""
    _kit_files(kit)
    target = kit / "startup" / CLIENT_CONTEXT
    if target.exists() and not force:
        raise HEContextError(f"{target} exists: the consortium has a key already (use --force to replace it)")
    server, client = make_contexts(**(params or DEFAULT_PARAMS))
    target.write_bytes(client)
    target.chmod(0o600)
    server_out.parent.mkdir(parents=True, exist_ok=True)
    server_out.write_bytes(server)
    return target, server_out


def seal_for(kit: Path, recipient_cert: Path, out: Path, *, fingerprint: str | None) -> Path:
    """Seal this kit's secret context to another hospital's certificate (None fingerprint: trust the CA)."""
    from nvflare.lighter.utils import load_crt

    from consortium.he.sealing import seal

    own_cert, own_key, root = _load(kit)
    if not recipient_cert.is_file():
        raise SealError(f"{recipient_cert}: no such certificate; ask the consortium admin for the hospital's .crt")
    recipient = load_crt(str(recipient_cert))
    check_site_cert(recipient, root, str(recipient_cert))
    _pin(recipient, fingerprint, "recipient")
    source = kit / "startup" / CLIENT_CONTEXT
    if not source.is_file():
        raise HEContextError(f"{source}: no HE context in this kit; the key holder runs `consortium site he-keygen`")
    if not _context(source.read_bytes(), source).has_secret_key():
        raise HEContextError(f"{source} has no secret key: only a hospital holding the key can seal it")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(
        seal(source.read_bytes(), recipient=recipient, sender=own_cert, sender_key=own_key, purpose=PURPOSE)
    )
    return out


def unseal_into(kit: Path, sealed: Path, *, fingerprint: str | None, force: bool = False):
    """Open a sealed secret context with this kit's private key and install it; returns the sender certificate."""
    from consortium.he.sealing import read_header, unseal

    own_cert, own_key, root = _load(kit)
    if not sealed.is_file():
        raise SealError(f"{sealed}: no such file; the key holder seals it with `consortium site he-seal`")
    blob = sealed.read_bytes()
    if read_header(blob, str(sealed)).get("purpose") != PURPOSE:
        raise SealError(f"{sealed}: sealed for another purpose than the consortium's CKKS key")
    data, sender = unseal(blob, path=str(sealed), own_cert=own_cert, own_key=own_key, root_ca=root)
    _pin(sender, fingerprint, f"{sealed}: sender")
    if not _context(data, sealed).has_secret_key():
        raise HEContextError(f"{sealed}: holds a context without secret key; ask the key holder to seal its own")
    target = kit / "startup" / CLIENT_CONTEXT
    if target.exists() and target.read_bytes() != data and not force:
        raise HEContextError(f"{target} exists and differs from {sealed}: use --force to replace this kit's key")
    target.write_bytes(data)
    target.chmod(0o600)
    return sender


def install_server_context(server_kit: Path, context_file: Path) -> Path:
    """Consortium admin: the key holder's public context into the server kit; refuses one with a secret key."""
    startup = server_kit / "startup"
    if not (startup / "fed_server.json").is_file():
        raise HEContextError(f"{server_kit}: not a server kit (no startup/fed_server.json); see `consortium ca init`")
    if not context_file.is_file():
        raise HEContextError(f"{context_file}: no such file; the key holder writes it with `consortium site he-keygen`")
    data = context_file.read_bytes()
    if _context(data, context_file).has_secret_key():
        raise HEContextError(
            f"{context_file} holds the secret key: the server must never have it. Send the server only the "
            f"{SERVER_CONTEXT} that `consortium site he-keygen` wrote"
        )
    target = startup / SERVER_CONTEXT
    target.write_bytes(data)
    return target
