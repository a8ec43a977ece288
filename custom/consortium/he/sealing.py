"""Seal a file to one participant's certificate (AES-256-GCM, key wrapped with RSA-OAEP), signed by the sender."""

from __future__ import annotations

import base64
import datetime
import hashlib
import json
import os

from cryptography import x509
from cryptography.exceptions import InvalidSignature, InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.x509.oid import NameOID

FORMAT = "consortium-sealed/1"
_OAEP = padding.OAEP(mgf=padding.MGF1(hashes.SHA256()), algorithm=hashes.SHA256(), label=None)
_PSS = padding.PSS(mgf=padding.MGF1(hashes.SHA256()), salt_length=padding.PSS.MAX_LENGTH)
_HEADER = ("format", "purpose", "sender", "sender_cert", "recipient", "recipient_key_sha256")


class SealError(RuntimeError):
    """A sealed file cannot be made or opened; the message names the file and what to do."""


def key_fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 (hex) of the certificate's public key, as FLARE's request.json records it (`public_key_sha256`)."""
    der = cert.public_key().public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)
    return hashlib.sha256(der).hexdigest()


def same_fingerprint(a: str, b: str) -> bool:
    norm = lambda s: s.lower().removeprefix("sha256:").replace(":", "").strip()
    return norm(a) == norm(b)


def common_name(cert: x509.Certificate) -> str:
    attrs = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    return str(attrs[0].value) if attrs else ""


def cert_type(cert: x509.Certificate) -> str:
    """FLARE's participant type in a certificate: client, server or an admin role."""
    attrs = cert.subject.get_attributes_for_oid(NameOID.UNSTRUCTURED_NAME)
    return str(attrs[0].value) if attrs else ""


def check_site_cert(cert: x509.Certificate, root_ca: x509.Certificate, what: str) -> None:
    """Refuse a certificate the consortium CA did not issue to a site (client), or one not valid now."""
    from nvflare.lighter.utils import verify_cert  # the signature check `nvflare package` makes

    try:
        verify_cert(cert, root_ca.public_key())
    except (ValueError, TypeError, InvalidSignature):
        raise SealError(
            f"{what}: certificate of {common_name(cert)!r} was not issued by this consortium's CA"
        ) from None
    now = datetime.datetime.now(datetime.timezone.utc)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise SealError(f"{what}: certificate of {common_name(cert)!r} is not valid now")
    if cert_type(cert) != "client":
        raise SealError(f"{what}: {common_name(cert)!r} is a {cert_type(cert) or 'unknown'} certificate, not a site's")


def _canonical(fields: dict) -> bytes:
    return json.dumps(fields, sort_keys=True, separators=(",", ":")).encode()


def seal(data: bytes, *, recipient: x509.Certificate, sender: x509.Certificate, sender_key, purpose: str) -> bytes:
    """`data` encrypted so only `recipient`'s private key opens it, signed with `sender_key`."""
    header = {
        "format": FORMAT,
        "purpose": purpose,
        "sender": common_name(sender),
        "sender_cert": sender.public_bytes(serialization.Encoding.PEM).decode(),
        "recipient": common_name(recipient),
        "recipient_key_sha256": key_fingerprint(recipient),
    }
    key, nonce = AESGCM.generate_key(bit_length=256), os.urandom(12)
    body = dict(header)
    body["nonce"] = base64.b64encode(nonce).decode()
    body["ciphertext"] = base64.b64encode(AESGCM(key).encrypt(nonce, data, _canonical(header))).decode()
    body["wrapped_key"] = base64.b64encode(recipient.public_key().encrypt(key, _OAEP)).decode()
    body["signature"] = base64.b64encode(sender_key.sign(_canonical(body), _PSS, hashes.SHA256())).decode()
    return json.dumps(body, indent=1).encode()


def read_header(blob: bytes, path: str) -> dict:
    try:
        body = json.loads(blob)
    except (ValueError, UnicodeDecodeError):
        body = None
    if not isinstance(body, dict) or body.get("format") != FORMAT:
        raise SealError(f"{path}: not a sealed file ({FORMAT}); ask the key holder for the file it sealed for you")
    return body


def unseal(blob: bytes, *, path: str, own_cert: x509.Certificate, own_key, root_ca: x509.Certificate) -> tuple:
    """(data, sender certificate) of a sealed file addressed to `own_cert`; refuses anything changed or foreign."""
    body = read_header(blob, path)
    try:
        sender = x509.load_pem_x509_certificate(body["sender_cert"].encode())
        signature = base64.b64decode(body["signature"])
        signed = {k: v for k, v in body.items() if k != "signature"}
        sender.public_key().verify(signature, _canonical(signed), _PSS, hashes.SHA256())
    except (KeyError, ValueError, TypeError, InvalidSignature):
        raise SealError(
            f"{path}: signature does not match: the file was changed after sealing; ask the key holder to seal it again"
        ) from None
    check_site_cert(sender, root_ca, f"{path}: sender")
    if not same_fingerprint(body["recipient_key_sha256"], key_fingerprint(own_cert)):
        raise SealError(
            f"{path}: sealed for {body['recipient']!r} (key {body['recipient_key_sha256'][:16]}...), not for "
            f"{common_name(own_cert)!r}; ask the key holder to seal it to your certificate"
        )
    try:
        key = own_key.decrypt(base64.b64decode(body["wrapped_key"]), _OAEP)
        header = {k: body[k] for k in _HEADER}
        nonce, ciphertext = base64.b64decode(body["nonce"]), base64.b64decode(body["ciphertext"])
        data = AESGCM(key).decrypt(nonce, ciphertext, _canonical(header))
    except ValueError:
        raise SealError(
            f"{path}: cannot be opened with this private key (it does not belong to {common_name(own_cert)!r}'s "
            "certificate); use the kit whose certificate the file was sealed to"
        ) from None
    except InvalidTag:
        raise SealError(f"{path}: the encrypted content was changed after sealing; ask for a new copy") from None
    return data, sender
