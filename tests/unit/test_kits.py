"""`consortium kit verify`: signed kits file by file; unsigned (hospital-built) kits by certificate and key."""

import shutil

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from consortium.config import load_site_configs
from consortium.deploy.kits import verify_kit
from consortium.deploy.provision import load_consortium, project_dict, run_provision, write_project
from tests.conftest import REPO


@pytest.fixture(scope="module")
def prod(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("prov")
    defn = load_consortium(REPO / "provisioning" / "consortium.yaml")
    sites = load_site_configs(REPO / "site_configs")
    write_project(project_dict(defn, sites, site_configs=REPO / "site_configs", storage_root=tmp), tmp / "p.yml")
    return run_provision(tmp / "p.yml", tmp / "ws")


def test_an_unsigned_kit_is_checked_by_its_certificate_chain_and_key(prod, tmp_path):
    kit = shutil.copytree(prod / "hospital-a", tmp_path / "hospital-a")
    for sig in kit.rglob("signature.json"):  # as a kit a hospital built itself carries none
        sig.unlink()
    problems, checked = verify_kit(kit)
    assert problems == [] and checked == ["startup/client.crt (certificate chain and key)"]
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    (kit / "startup" / "client.key").write_bytes(pem)
    shutil.copy(prod / "hospital-b" / "startup" / "rootCA.pem", kit / "startup" / "rootCA.pem")  # same CA: still ok
    problems, _ = verify_kit(kit)
    assert problems == ["startup/client.key: does not belong to startup/client.crt"]


def test_a_signed_kit_names_the_changed_file(prod, tmp_path):
    kit = shutil.copytree(prod / "hospital-b", tmp_path / "hospital-b")
    assert verify_kit(kit)[0] == []
    (kit / "startup" / "fed_client.json").write_text("{}")
    assert any("fed_client.json: signature does not match" in p for p in verify_kit(kit)[0])
