"""`consortium ca ...` (consortium admin) and `consortium site ...` (at a hospital): distributed kits and HE key."""

from __future__ import annotations

import functools
import sys
from pathlib import Path

from consortium.deploy import distributed as D

WARN_CA = "not pinned: you trust the consortium CA that this certificate belongs to {name} (see --help)"


def _handles_seal_errors(fn):
    @functools.wraps(fn)
    def run(args) -> int:
        from consortium.he.sealing import SealError

        try:
            return fn(args)
        except SealError as exc:
            print(f"ERROR {exc}", file=sys.stderr)
            return 2

    return run


def _consortium_dir(args) -> Path:
    return Path(args.dir or Path(args.workspace) / "distributed" / "consortium").resolve()


def _site_dir(args) -> Path:
    return Path(args.dir or Path(args.workspace) / "distributed" / args.site).resolve()


def _site_cfg(args):
    from consortium.config import ConfigError, load_site_configs

    sites = load_site_configs(args.site_configs)
    if args.site not in sites:
        raise ConfigError(f"--site {args.site}: no {args.site}.yaml in {args.site_configs} (known: {', '.join(sites)})")
    return sites[args.site]


def cmd_ca_init(args) -> int:
    from consortium.deploy.provision import load_consortium

    defn, folder = load_consortium(args.consortium), _consortium_dir(args)
    result = D.init(defn, folder)
    print(f"consortium CA for '{defn.project}' in {folder / 'ca'} (rootCA.key: keep it offline, never send it)")
    for name, kit in result["kits"].items():
        print(f"  kit {name}: {kit}")
    print(f"root CA fingerprint: {result['fingerprint']}")
    print("Give the fingerprint to every hospital over a second channel (e.g. by phone); they check their kit with it.")
    return 0


def cmd_ca_approve(args) -> int:
    data = D.approve(Path(args.request_zip), _consortium_dir(args), force=args.force)
    print(f"approved {data['kind']} {data['name']} (org {data['org']}): {data['signed_zip']}")
    if data.get("certificate"):
        print(f"its certificate (public; for the HE key holder): {data['certificate']}")
    print(f"root CA fingerprint: {data['rootca_fingerprint_sha256']}")
    print(f"Return {Path(data['signed_zip']).name} to {data['name']}; no other hospital's kit changes.")
    return 0


def cmd_ca_install_he(args) -> int:
    from consortium.deploy.provision import load_consortium
    from consortium.he.keyshare import install_server_context

    kit = D.find_kit(_consortium_dir(args), load_consortium(args.consortium).server_name)
    target = install_server_context(kit, Path(args.context))
    print(f"server HE context (no secret key: the server adds ciphertexts, never decrypts): {target}")
    return 0


def cmd_site_request(args) -> int:
    from consortium.deploy.provision import load_consortium

    cfg, folder = _site_cfg(args), _site_dir(args)
    participant = {"name": cfg.name, "type": "client", "org": cfg.org}
    data = D.request(load_consortium(args.consortium).project, participant, folder / "request", force=args.force)
    print(f"request: {data['request_zip']}")
    print(
        f"Send only this zip to the consortium admin. The private key stays here: {folder / 'request' / cfg.name}.key"
    )
    print(f"your key fingerprint (tell it to the HE key holder by phone): {data['public_key_sha256']}")
    return 0


def cmd_site_package(args) -> int:
    from consortium.governance.charter import check_site_approvals, load_charter

    cfg, folder = _site_cfg(args), _site_dir(args)
    charter = load_charter(args.consortium)  # the consortium's charter into the kit; the site's approvals fit it
    check_site_approvals(charter, {cfg.name: cfg})
    kit = D.package(Path(args.signed_zip), folder / "request", fingerprint=args.fingerprint,
                    workspace=folder / "kits", force=args.force)  # fmt: skip
    D.write_site_policies(kit, cfg, charter=charter)
    print(f"kit of {cfg.name}: {kit} (root CA fingerprint checked; site policies in local/)")
    print(
        f"HE: install the consortium key with `consortium site he-unseal` (or he-keygen), then {kit}/startup/start.sh"
    )
    return 0


def cmd_site_fingerprint(args) -> int:
    from nvflare.lighter.utils import load_crt

    from consortium.he.sealing import key_fingerprint

    print(key_fingerprint(load_crt(str(D.find_kit(_site_dir(args), args.site) / "startup" / "client.crt"))))
    return 0


def _params(args) -> dict | None:
    from consortium.deploy.provision import load_consortium

    return load_consortium(args.consortium).he


@_handles_seal_errors
def cmd_site_he_keygen(args) -> int:
    from consortium.he.keyshare import generate

    folder = _site_dir(args)
    out = Path(args.out) if args.out else folder / "he" / "server_context.tenseal"
    secret, public = generate(D.find_kit(folder, args.site), out, params=_params(args), force=args.force)
    print(f"secret CKKS context (stays in this kit): {secret}")
    print(f"public context for the server: {public}; send it to the consortium admin (`consortium ca install-he`)")
    print("Seal the secret context to each other hospital: consortium site he-seal --to HOSPITAL.crt ...")
    return 0


@_handles_seal_errors
def cmd_site_he_seal(args) -> int:
    from consortium.he.keyshare import seal_for

    folder, cert = _site_dir(args), Path(args.to)
    out = Path(args.out) if args.out else folder / "he" / f"{cert.stem}.ckks.sealed"
    path = seal_for(D.find_kit(folder, args.site), cert, out, fingerprint=args.to_fingerprint)
    if args.trust_ca:
        print(WARN_CA.format(name=cert.stem))
    print(f"sealed for {cert.stem}: {path} (only {cert.stem}'s private key opens it; send it through any channel)")
    return 0


@_handles_seal_errors
def cmd_site_he_unseal(args) -> int:
    from consortium.he.keyshare import unseal_into
    from consortium.he.sealing import common_name, key_fingerprint

    kit = D.find_kit(_site_dir(args), args.site)
    sender = unseal_into(kit, Path(args.sealed), fingerprint=args.from_fingerprint, force=args.force)
    if args.trust_ca:
        print(WARN_CA.format(name=common_name(sender)))
    print(f"HE context from {common_name(sender)} (key {key_fingerprint(sender)}) installed in {kit}/startup/")
    return 0


def _pin(p, flag: str, whose: str) -> None:
    group = p.add_mutually_exclusive_group(required=True)
    group.add_argument(flag, help=f"{whose} key fingerprint, confirmed with that hospital outside the consortium")
    group.add_argument("--trust-ca", action="store_true", help="skip the check: trust the consortium CA alone")


def add_distributed(sub) -> None:
    ca = sub.add_parser("ca", help="consortium admin: CA, server kit, approve hospitals (distributed provisioning)")
    ca_sub = ca.add_subparsers(dest="action", required=True)
    site = sub.add_parser("site", help="at a hospital: own key, request, kit, HE key (distributed provisioning)")
    site_sub = site.add_subparsers(dest="action", required=True)

    def add(group, name, fn, help_text, *, needs_site: bool):
        p = group.add_parser(name, help=help_text)
        p.add_argument("--dir", help="this party's folder (default WORKSPACE/distributed/<consortium or site>)")
        if needs_site:
            p.add_argument("--site", required=True, help="this hospital's name (its site_configs/<site>.yaml)")
        p.set_defaults(fn=fn)
        return p

    add(ca_sub, "init", cmd_ca_init, "root CA, server kit and the consortium's admin kits", needs_site=False)
    p = add(ca_sub, "approve", cmd_ca_approve, "sign a hospital's request zip", needs_site=False)
    p.add_argument("request_zip")
    p.add_argument("--force", action="store_true", help="sign again a request whose signed zip exists")
    p = add(ca_sub, "install-he", cmd_ca_install_he, "put the key holder's public context in the server kit",
            needs_site=False)  # fmt: skip
    p.add_argument("context", help="server_context.tenseal from `consortium site he-keygen`")

    p = add(site_sub, "request", cmd_site_request, "make this hospital's private key and request zip", needs_site=True)
    p.add_argument("--force", action="store_true", help="a new key and request (the old ones go to request/.bak)")
    p = add(site_sub, "package", cmd_site_package, "build this hospital's kit from its signed zip", needs_site=True)
    p.add_argument("signed_zip")
    p.add_argument("--fingerprint", required=True, help="root CA fingerprint, from the consortium admin by phone")
    p.add_argument("--force", action="store_true", help="replace an existing kit of this hospital")
    add(site_sub, "fingerprint", cmd_site_fingerprint, "print this hospital's key fingerprint", needs_site=True)
    p = add(site_sub, "he-keygen", cmd_site_he_keygen, "key holder: make the consortium's CKKS key", needs_site=True)
    p.add_argument("--out", help="where to write the server's public context")
    p.add_argument("--force", action="store_true", help="replace this kit's existing key")
    p = add(site_sub, "he-seal", cmd_site_he_seal, "key holder: seal the secret context to a hospital", needs_site=True)
    p.add_argument("--to", required=True, help="the recipient hospital's certificate (certs/<site>.crt)")
    p.add_argument("--out", help="the sealed file (default <dir>/he/<site>.ckks.sealed)")
    _pin(p, "--to-fingerprint", "the recipient's")
    p = add(site_sub, "he-unseal", cmd_site_he_unseal, "install the sealed secret context", needs_site=True)
    p.add_argument("sealed")
    p.add_argument("--force", action="store_true", help="replace a different key already in this kit")
    _pin(p, "--from-fingerprint", "the key holder's")
