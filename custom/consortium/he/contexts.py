"""TenSEAL contexts: the kits' (from FLARE's HEBuilder) or, in the simulator, generated for the run."""

from __future__ import annotations

from pathlib import Path

SERVER_CONTEXT = "server_context.tenseal"  # no secret key: the server can add ciphertexts, never decrypt
CLIENT_CONTEXT = "client_context.tenseal"  # with the secret key, in every hospital's kit
DEFAULT_PARAMS = {"poly_modulus_degree": 8192, "coeff_mod_bit_sizes": [60, 40, 40], "scale_bits": 40}


class HEContextError(RuntimeError):
    """A participant has no usable HE context; the message says what to do."""


def make_contexts(poly_modulus_degree: int, coeff_mod_bit_sizes: list[int], scale_bits: int) -> tuple[bytes, bytes]:
    """(server, client) serialized contexts, made the way FLARE's HEBuilder makes them."""
    import tenseal as ts

    ctx = ts.context(
        ts.SCHEME_TYPE.CKKS,
        poly_modulus_degree=poly_modulus_degree,
        coeff_mod_bit_sizes=coeff_mod_bit_sizes,
        encryption_type=ts.ENCRYPTION_TYPE.SYMMETRIC,
    )
    ctx.generate_relin_keys()
    ctx.global_scale = 2**scale_bits

    def dump(secret: bool) -> bytes:
        return ctx.serialize(
            save_public_key=secret, save_secret_key=secret, save_galois_keys=False, save_relin_keys=True
        )

    return dump(False), dump(True)


def write_contexts(startup_dir: Path, params: dict | None = None) -> None:
    """Write both contexts into a (simulator) startup folder."""
    server, client = make_contexts(**(params or DEFAULT_PARAMS))
    startup_dir.mkdir(parents=True, exist_ok=True)
    (startup_dir / SERVER_CONTEXT).write_bytes(server)
    (startup_dir / CLIENT_CONTEXT).write_bytes(client)


def load_context(fl_ctx, file_name: str):
    """Load a context from this participant's startup kit, refusing one whose signature fails."""
    import tenseal as ts
    from nvflare.apis.fl_constant import FLContextKey
    from nvflare.fuel.sec.security_content_service import LoadResult, SecurityContentService

    workspace = fl_ctx.get_prop(FLContextKey.WORKSPACE_OBJECT)
    path = Path(workspace.get_startup_kit_dir()) / file_name if workspace else Path(file_name)
    if not path.is_file():
        raise HEContextError(
            f"{fl_ctx.get_identity_name()}: no HE context {path}. The consortium was provisioned without "
            "HEBuilder: add an `he:` section to provisioning/consortium.yaml and provision again, "
            "or run the plaintext variant of the job (fedavg_plain). A kit built with `consortium site package` gets "
            "the key from the key holder: `consortium site he-unseal` (hospital), `consortium ca install-he` (server)."
        )
    data, result = SecurityContentService.load_content(file_name)
    if result == LoadResult.INVALID_SIGNATURE:
        raise HEContextError(f"{path}: signature does not match; the kit was changed after provisioning")
    try:
        return ts.context_from(data if data else path.read_bytes())
    except Exception as exc:
        raise HEContextError(f"{path}: not a TenSEAL context ({exc})") from None
