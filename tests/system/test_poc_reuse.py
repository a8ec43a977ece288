"""`poc up` reuses the kits it provisioned while nothing they are made from has changed, starts a reused
consortium as clean as a new one, and provisions again when a site config changes (real processes)."""

import pytest

from consortium.deploy.poc import PocPaths, group_alive, port_free, read_state

pytestmark = [pytest.mark.system, pytest.mark.slow]


def test_unchanged_kits_are_reused_and_a_changed_site_config_provisions_again(cli):
    paths = PocPaths(cli.tmp / "ws" / "poc-consortium")
    states = []
    try:
        first = cli("poc", "up")
        assert "provisioning the kits (no kits provisioned yet)" in first.stdout
        assert "registered sites: site-a, site-b" in first.stdout
        state = read_state(paths)
        kit = paths.prod(state["project"])
        key = (kit / "site-a" / "startup" / "client.key").read_bytes()
        (kit / "site-a" / "left_by_a_run.txt").write_text("a file a run leaves in its kit")
        cli("poc", "down")
        states.append(state)

        again = cli("poc", "up")
        assert "kits unchanged since " in again.stdout and ", reused" in again.stdout, again.stdout
        assert "registered sites: site-a, site-b" in again.stdout
        states.append(read_state(paths))
        assert (kit / "site-a" / "startup" / "client.key").read_bytes() == key  # the same kits
        assert not (kit / "site-a" / "left_by_a_run.txt").exists(), "a reused consortium starts as a new one"
        cli("poc", "down")

        config = cli.tmp / "site_configs" / "site-b.yaml"
        config.write_text(config.read_text() + "# an edit: any change provisions the kits again\n")
        changed = cli("poc", "up")
        assert f"provisioning the kits ({config.resolve()} changed)" in changed.stdout, changed.stdout
        assert "registered sites: site-a, site-b" in changed.stdout
        states.append(read_state(paths))
        assert (kit / "site-a" / "startup" / "client.key").read_bytes() != key  # new keys
    finally:
        cli("poc", "down", check=False)
    assert read_state(paths) is None
    for state in states:
        assert not group_alive(state["pgid"]), "poc down left processes behind"
        assert all(port_free(p) for p in state["ports"])
