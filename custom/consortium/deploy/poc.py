"""A real local consortium with FLARE's own POC machinery: prepare from our project.yml, start, stop, clean up.

FLARE's `nvflare poc prepare -i project.yml` provisions the kits (our kit builder writes each site's
policies into them), kept while their inputs are unchanged (poc_kits.py); the kits' own start scripts run the
server and hospitals over mTLS on loopback, all at once (poc_start.py); `nvflare poc stop` stops them.
This module adds what POC lacks: free ports, an isolated HOME, readiness, stale-process clean-up.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from consortium.config import load_site_configs, require_data_dirs
from consortium.deploy.poc_kits import KitCache, kit_inputs
from consortium.deploy.poc_start import StartError, shutdown, start_all, wait_registered
from consortium.deploy.ports import free_port, port_free
from consortium.deploy.processes import kill_kit, kit_processes, stop_processes  # noqa: F401 (part of this API)
from consortium.deploy.provision import ConsortiumDef, load_consortium, project_dict, write_project


class PocError(RuntimeError):
    """The local consortium cannot be brought up, reached or stopped; the message says what to do."""


@dataclass(frozen=True)
class PocPaths:
    root: Path

    @property
    def project_yml(self) -> Path:
        return self.root / "project.yml"

    @property
    def poc(self) -> Path:
        return self.root / "poc"

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def state(self) -> Path:
        return self.root / "state.json"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    def prod(self, project: str) -> Path:
        return self.poc / project / "prod_00"


def choose_ports(defn: ConsortiumDef, *, strict: bool = False, last: tuple | None = None) -> tuple[int, int]:
    """The configured ports if free; else the `last` ones if free (the kits made for them can be reused), else
    free ones (or an error naming the port if `strict`)."""
    wanted = (defn.fed_learn_port, defn.admin_port)
    busy = [p for p in wanted if not port_free(p)]
    if not busy:
        return wanted
    if strict:
        raise PocError(f"port(s) {busy} on 127.0.0.1 are in use; free them or change server ports in {defn.source}")
    if last and len(last) == 2 and all(port_free(p) for p in last):
        return tuple(last)
    fed, admin = free_port(), free_port()
    while admin == fed:
        admin = free_port()
    return fed, admin


def nvflare_env(paths: PocPaths) -> dict:
    """Environment for nvflare commands: POC workspace and a HOME of its own (nvflare writes ~/.nvflare)."""
    paths.home.mkdir(parents=True, exist_ok=True)
    # The kits' start scripts run `python3` from PATH: make it this interpreter, which has `consortium` installed.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    return {**os.environ, "NVFLARE_POC_WORKSPACE": str(paths.poc), "HOME": str(paths.home), "PATH": path}


def _nvflare(args: list[str], paths: PocPaths, *, timeout: float, log_name: str):
    paths.logs.mkdir(parents=True, exist_ok=True)
    log = paths.logs / log_name
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "nvflare.cli", *args], stdout=out, stderr=subprocess.STDOUT,
                                env=nvflare_env(paths))  # fmt: skip
        try:
            code = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            code = None
    return proc, code, log


def group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
        return True
    except ProcessLookupError:
        return False
    except PermissionError:
        return True


def kill_group(pgid: int, grace: float = 10.0) -> None:
    """SIGTERM the process group we started, then SIGKILL what is left after `grace` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
        if not group_alive(pgid):
            return
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return
        deadline = time.time() + wait
        while time.time() < deadline and group_alive(pgid):
            time.sleep(0.2)


def read_state(paths: PocPaths) -> dict | None:
    return json.loads(paths.state.read_text()) if paths.state.exists() else None


def start_kit(paths: PocPaths, kit: Path) -> None:
    """Start one kit again with its own startup/start.sh, in a session of its own (as an operator would)."""
    start = ["bash", str(kit / "startup" / "start.sh")]
    subprocess.run(start, cwd=kit, env=nvflare_env(paths), start_new_session=True, check=True)


def _flare(paths: PocPaths) -> list:
    """The FLARE (Python) processes running from these kits, without their start scripts' shell loops."""
    found = []
    for proc in kit_processes(paths):
        try:
            if "python" in proc.name():
                found.append(proc)
        except Exception:  # gone meanwhile
            pass
    return found


def down(paths: PocPaths, *, log=print) -> bool:
    """Stop the consortium started from `paths`: FLARE's shutdown (poc_start.shutdown), then our process group,
    then any process still running from these kits. True if one ran; raises PocError if anything is left running."""
    state = read_state(paths)
    leftovers = kit_processes(paths)
    if state is None and not leftovers:
        return False
    if state is not None:
        why = "the state file names no admin (written by an older version)"
        if state.get("admin"):
            why = shutdown(admin=state["admin"], admin_kit=admin_kit(paths, state), running=lambda: _flare(paths))
        if why:
            log(f"{why}; stopping the processes directly")
        pgid = state.get("pgid")  # what is left: the kits' start-script loops, which would restart nothing now
        if pgid and group_alive(pgid):
            kill_group(pgid)
    stray = stop_processes(kit_processes(paths))
    if stray:
        log(f"stopped {stray} process(es) started from these kits outside `poc up` (e.g. restarted by hand)")
    left = kit_processes(paths)
    if left:
        raise PocError(f"still running after stopping: PIDs {', '.join(str(p.pid) for p in left)}")
    for port in (state or {}).get("ports", []):
        deadline = time.time() + 15
        while not port_free(port) and time.time() < deadline:
            time.sleep(0.5)
        if not port_free(port):
            raise PocError(f"port {port} is still in use after stopping the consortium; check `ss -ltnp`")
    paths.state.unlink(missing_ok=True)
    return True


def up(
    paths: PocPaths,
    *,
    consortium_file: Path,
    site_configs: Path,
    timeout: float = 300.0,
    log=print,
) -> dict:
    """Prepare kits from our definitions (or reuse them when nothing they are made from changed: poc_kits.py),
    start server + hospitals at once, wait until all are registered (poc_start.py)."""
    if read_state(paths) or kit_processes(paths):  # its kits are about to be replaced
        log("found a consortium started earlier from this workspace: stopping it first")
        down(paths, log=log)
    defn = load_consortium(consortium_file)
    sites = load_site_configs(site_configs)
    require_data_dirs(sites)
    cache = KitCache(paths.root)
    ports = choose_ports(defn, last=cache.ports())
    if ports != (defn.fed_learn_port, defn.admin_port):
        log(f"configured ports busy; using free ports {ports[0]} (fed_learn) and {ports[1]} (admin)")
    project = project_dict(defn, sites, site_configs=site_configs, storage_root=paths.poc / "storage", ports=ports)
    changes = write_project(project, paths.project_yml)
    inputs = kit_inputs(paths.project_yml, consortium_file, site_configs)
    why = cache.changed(inputs) or ([] if (paths.home / ".nvflare").is_dir() else ["no nvflare config in its HOME"])
    if why:
        log(f"project.yml: {', '.join(changes) if changes else 'unchanged'}; provisioning the kits ({'; '.join(why)})")
        _, code, prep_log = _nvflare(
            ["poc", "prepare", "-i", str(paths.project_yml), "--force"], paths, timeout=120, log_name="poc_prepare.log"
        )
        if code != 0:
            raise PocError(f"nvflare poc prepare failed (exit {code}); see {prep_log}")
        cache.save(paths.poc, inputs, ports=ports)
    else:
        log(f"kits unchanged since {cache.restore(paths.poc)}, reused")
    start, prod = time.time(), paths.prod(defn.project)
    admin = next(a.name for a in defn.admins if a.role == "project_admin")
    paths.logs.mkdir(parents=True, exist_ok=True)
    # every process of the consortium shares this group: `down` can always stop it
    pgid = start_all([prod / defn.server_name, *(prod / s for s in sites)], env=nvflare_env(paths),
                     log=paths.logs / "poc_start.log")  # fmt: skip
    state = {"pgid": pgid, "ports": list(ports), "project": defn.project, "sites": list(sites), "admin": admin}
    paths.state.write_text(json.dumps(state, indent=1))
    try:
        state["registered"] = wait_registered(
            admin=admin, admin_kit=prod / admin, admin_port=ports[1], sites=list(sites),
            alive=lambda: group_alive(pgid), timeout=timeout, logs=f"{prod}/<participant>/log.txt and poc_console.log",
        )  # fmt: skip
    except StartError as exc:
        down(paths, log=log)
        raise PocError(str(exc)) from None
    state["ready_seconds"] = time.time() - start
    paths.state.write_text(json.dumps(state, indent=1))
    return state


def admin_kit(paths: PocPaths, state: dict) -> Path:
    return paths.prod(state["project"]) / state["admin"]


def admin_kits(paths: PocPaths, state: dict) -> dict[str, Path]:
    """Every person's admin kit in the local consortium, by name."""
    prod = paths.prod(state["project"])
    return {kit.parent.parent.name: kit.parent.parent for kit in sorted(prod.glob("*/startup/fl_admin.sh"))}
