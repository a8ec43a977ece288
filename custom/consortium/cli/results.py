"""The end of every training run (simulate, submit, download, demo): plaintext model, metrics, summary, report."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path

from consortium import constants as C


def finish_run(out: Path, *, key: Callable[[], tuple[Path, str]] | None, headline: str = "",
               log: Path | None = None, wall_seconds: float | None = None) -> int:  # fmt: skip
    """One ending wherever the job ran, so simulate and submit cannot drift apart.

    An HE job's global model is ciphertext: `key` gives (a hospital's client_context.tenseal, whose key it is)
    when such a key is here (simulator, POC), and the plaintext model is released with it; without one
    (production: the admin holds no hospital key) the model stays ciphertext for a hospital to decrypt. It is a
    callable so that the key is looked up only for an HE job. `wall_seconds` is recorded in the metrics."""
    history = json.loads((out / C.METRICS_FILE).read_text())
    if (history.get("meta") or {}).get("he"):
        if key is None:
            print(f"HE: {out / C.GLOBAL_MODEL_FILE} is ciphertext; a hospital decrypts it with `consortium he decrypt`")
        else:
            from consortium.he.release import release_plaintext

            release_plaintext(out, *key())
    if wall_seconds is not None:
        history["wall_seconds"] = wall_seconds
        (out / C.METRICS_FILE).write_text(json.dumps(history, indent=1))
    from consortium.report import print_job_summary

    print_job_summary(out, history, headline, log=log)
    return 0


def cmd_he_decrypt(args) -> int:
    from consortium.he.release import decrypt_model_file

    try:
        out = decrypt_model_file(Path(args.model), Path(args.context), Path(args.out))
    except (ValueError, FileNotFoundError, PermissionError) as exc:
        print(f"ERROR {exc}", file=sys.stderr)
        return 2
    print(f"plaintext global model: {out}")
    return 0


def add_he(sub) -> None:
    he = sub.add_parser("he", help="homomorphic encryption tools").add_subparsers(dest="action", required=True)
    dec = he.add_parser("decrypt", help="decrypt an encrypted global model with a hospital's client_context.tenseal")
    dec.add_argument("model", help="the server's ciphertext checkpoint (global_model.pt of an HE job)")
    dec.add_argument("--context", required=True, help="startup/client_context.tenseal of a hospital kit")
    dec.add_argument("--out", default="global_model.plain.pt")
    dec.set_defaults(fn=cmd_he_decrypt)
