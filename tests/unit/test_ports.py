"""Ports: a busy configured port is replaced by a free one, or named in a clear error."""

import socket
from dataclasses import replace

import pytest

from consortium.deploy.poc import PocError, choose_ports, free_port, port_free
from consortium.deploy.provision import load_consortium
from tests.conftest import REPO


@pytest.fixture
def busy_fed_port():
    """(the port a listening socket holds, the demo consortium with that port as its fed_learn_port)."""
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        taken = busy.getsockname()[1]
        demo = load_consortium(REPO / "provisioning/consortium.yaml")
        yield taken, replace(demo, fed_learn_port=taken, admin_port=free_port())


def test_busy_port_is_replaced_or_named(busy_fed_port):
    taken, defn = busy_fed_port
    assert not port_free(taken)
    fed, admin = choose_ports(defn)
    assert taken not in (fed, admin) and fed != admin and port_free(fed) and port_free(admin)
    with pytest.raises(PocError, match=f"{taken}.*in use"):
        choose_ports(defn, strict=True)


def test_busy_configured_ports_fall_back_to_the_last_kits_ports_when_free(busy_fed_port):
    """So that `poc up` can reuse the kits it made last time (their project.yml names those ports)."""
    taken, defn = busy_fed_port
    last = (free_port(), free_port())
    assert choose_ports(defn, last=last) == last
    fed, admin = choose_ports(defn, last=(taken, last[1]))  # the last ones are busy too: new free ports
    assert taken not in (fed, admin) and port_free(fed) and port_free(admin)
