"""Sealing the CKKS secret context to a hospital's certificate: roundtrip, wrong key, tampering, pinning."""

import base64
import datetime
import json

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.x509.oid import NameOID

from consortium.he import keyshare
from consortium.he.contexts import CLIENT_CONTEXT, SERVER_CONTEXT, HEContextError
from consortium.he.sealing import SealError, key_fingerprint, seal, unseal


def _cert(name: str, kind: str, signer_key, issuer: str, key=None):
    key = key or rsa.generate_private_key(public_exponent=65537, key_size=2048)
    attrs = [x509.NameAttribute(NameOID.COMMON_NAME, name)]
    if kind:
        attrs.append(x509.NameAttribute(NameOID.UNSTRUCTURED_NAME, kind))
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=30))
        .sign(signer_key, hashes.SHA256())
    )
    return cert, key


@pytest.fixture(scope="module")
def pki():
    """A consortium CA with three sites and a server, plus a foreign CA's site."""
    ca_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    root, _ = _cert("test_consortium", "", ca_key, "test_consortium", key=ca_key)
    out = {"root": root, **{n: _cert(n, "client", ca_key, "test_consortium") for n in ("site-a", "site-b", "site-c")}}
    out["server"] = _cert("localhost", "server", ca_key, "test_consortium")
    foreign_key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    out["foreign"] = _cert("site-x", "client", foreign_key, "other_project")
    return out


def _kit(tmp_path, pki, name):
    startup = tmp_path / name / "startup"
    startup.mkdir(parents=True)
    cert, key = pki[name]
    (startup / "client.crt").write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    (startup / "client.key").write_bytes(pem)
    (startup / "rootCA.pem").write_bytes(pki["root"].public_bytes(serialization.Encoding.PEM))
    return tmp_path / name


def _sealed(pki, data=b"secret context", to="site-b"):
    return seal(data, recipient=pki[to][0], sender=pki["site-a"][0], sender_key=pki["site-a"][1], purpose="test")


def _open(pki, blob, as_cert="site-b", with_key="site-b"):
    return unseal(blob, path="x.sealed", own_cert=pki[as_cert][0], own_key=pki[with_key][1], root_ca=pki["root"])


def test_roundtrip_and_sender(pki):
    blob = _sealed(pki)
    assert b"secret context" not in blob
    data, sender = _open(pki, blob)
    assert data == b"secret context" and key_fingerprint(sender) == key_fingerprint(pki["site-a"][0])


def test_another_hospital_cannot_open_it(pki):
    with pytest.raises(SealError, match="x.sealed: sealed for 'site-b'.*not for 'site-c'"):
        _open(pki, _sealed(pki), as_cert="site-c", with_key="site-c")


def test_wrong_private_key_is_refused(pki):
    with pytest.raises(SealError, match="x.sealed: cannot be opened with this private key"):
        _open(pki, _sealed(pki), with_key="site-c")


@pytest.mark.parametrize("field", ["ciphertext", "recipient", "wrapped_key", "sender"])
def test_tampered_file_is_refused(pki, field):
    body = json.loads(_sealed(pki))
    if field in ("ciphertext", "wrapped_key"):
        raw = bytearray(base64.b64decode(body[field]))
        raw[10] ^= 1
        body[field] = base64.b64encode(bytes(raw)).decode()
    else:
        body[field] += "x"
    with pytest.raises(SealError, match="x.sealed: signature does not match: the file was changed after sealing"):
        _open(pki, json.dumps(body).encode())


def test_not_a_sealed_file(pki):
    with pytest.raises(SealError, match="x.sealed: not a sealed file"):
        _open(pki, b"\x00garbage")


def test_sender_from_another_ca_is_refused(pki):
    blob = seal(b"x", recipient=pki["site-b"][0], sender=pki["foreign"][0], sender_key=pki["foreign"][1], purpose="t")
    with pytest.raises(SealError, match="sender: certificate of 'site-x' was not issued by this consortium's CA"):
        _open(pki, blob)


def test_kits_seal_unseal_and_pinning(tmp_path, pki):
    a, b, c = (_kit(tmp_path, pki, n) for n in ("site-a", "site-b", "site-c"))
    secret, public = keyshare.generate(a, tmp_path / "out" / SERVER_CONTEXT)
    certs = tmp_path / "certs"
    certs.mkdir()
    for name in ("site-b", "site-c", "server", "foreign"):
        (certs / f"{name}.crt").write_bytes(pki[name][0].public_bytes(serialization.Encoding.PEM))
    with pytest.raises(SealError, match="'localhost' is a server certificate, not a site's"):
        keyshare.seal_for(a, certs / "server.crt", tmp_path / "s.sealed", fingerprint=None)
    with pytest.raises(SealError, match="not issued by this consortium's CA"):
        keyshare.seal_for(a, certs / "foreign.crt", tmp_path / "s.sealed", fingerprint=None)
    with pytest.raises(SealError, match="recipient 'site-b' has key fingerprint .* not the 00ff"):
        keyshare.seal_for(a, certs / "site-b.crt", tmp_path / "s.sealed", fingerprint="00ff")
    fp_b, fp_a = key_fingerprint(pki["site-b"][0]), key_fingerprint(pki["site-a"][0])
    sealed = keyshare.seal_for(a, certs / "site-b.crt", tmp_path / "b.sealed", fingerprint=fp_b.upper())
    with pytest.raises(SealError, match="sender 'site-a' has key fingerprint"):
        keyshare.unseal_into(b, sealed, fingerprint=key_fingerprint(pki["site-c"][0]))
    assert not (b / "startup" / CLIENT_CONTEXT).exists()
    keyshare.unseal_into(b, sealed, fingerprint=fp_a)
    assert (b / "startup" / CLIENT_CONTEXT).read_bytes() == secret.read_bytes()
    with pytest.raises(SealError, match="not for 'site-c'"):
        keyshare.unseal_into(c, sealed, fingerprint=None)
    with pytest.raises(HEContextError, match="exists: the consortium has a key already"):
        keyshare.generate(a, tmp_path / "again.tenseal")


def test_server_gets_only_the_public_context(tmp_path, pki):
    a = _kit(tmp_path, pki, "site-a")
    secret, public = keyshare.generate(a, tmp_path / SERVER_CONTEXT)
    server = tmp_path / "server"
    (server / "startup").mkdir(parents=True)
    (server / "startup" / "fed_server.json").write_text("{}")
    with pytest.raises(HEContextError, match="holds the secret key: the server must never have it"):
        keyshare.install_server_context(server, secret)
    assert keyshare.install_server_context(server, public).read_bytes() == public.read_bytes()
