"""Plaintext model release: a hospital decrypts the server's ciphertext checkpoint with its own kit's key."""

from __future__ import annotations

from pathlib import Path

from consortium.algorithms import split_controls
from consortium.constants import ENCRYPTED_MODEL_FILE, GLOBAL_MODEL_FILE
from consortium.he import wire


def is_encrypted(model_path: Path) -> bool:
    import torch

    return wire.is_encrypted(torch.load(model_path, weights_only=False, map_location="cpu"))


def decrypt_model_file(model_path: Path, context_path: Path, out: Path) -> Path:
    """Decrypt `model_path` (ciphertext global model) with a hospital's `client_context.tenseal`."""
    import tenseal as ts
    import torch

    params = torch.load(model_path, weights_only=False, map_location="cpu")
    if not wire.is_encrypted(params):
        raise ValueError(f"{model_path} is not an encrypted global model (it is already plaintext)")
    if not context_path.is_file():
        raise FileNotFoundError(f"{context_path}: no HE context; use startup/client_context.tenseal of a hospital kit")
    context = ts.context_from(context_path.read_bytes())
    if not context.has_secret_key():
        raise PermissionError(f"{context_path} has no secret key (the server's context cannot decrypt)")
    update = wire.EncryptedUpdate.decode(params, f"the checkpoint {model_path}")
    plain, _ = split_controls(update.decrypt(context))  # SCAFFOLD's controls are not model weights
    torch.save({k: torch.as_tensor(v) for k, v in plain.items()}, out)
    return out


def release_plaintext(out: Path, context: Path, holder: str) -> None:
    """If `out`'s global model is ciphertext (HE job), keep it aside and decrypt it as a hospital would."""
    model = out / GLOBAL_MODEL_FILE
    if model.exists() and is_encrypted(model):
        encrypted = model.rename(out / ENCRYPTED_MODEL_FILE)
        decrypt_model_file(encrypted, context, model)
        print(f"HE: the server's checkpoint is ciphertext ({encrypted.name}); decrypted with {holder}")
