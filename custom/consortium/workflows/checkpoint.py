"""The server's per-round checkpoint (global model, ciphertext under HE, and round) and resuming from it."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from consortium import constants as C
from consortium.algorithms import split_controls
from consortium.he.wire import is_encrypted

# settings a resumed job must share with the job it continues (else it is another experiment)
SAME_SETTINGS = ("task", "algorithm", "rounds", "he", "local_epochs", "lr", "dp_sgd", "dp_update", "server_momentum",
                 "server_optimizer")  # fmt: skip


# The checkpoint is written every round: torch.save's default pickle protocol (2) has no opcode for bytes, so
# every ciphertext chunk (and numpy array) went through latin-1 text and back, 4x slower to write, 5x slower to
# read and 1.5x larger (a 4.9 M-parameter model's 160 MB of ciphertext: 15 s vs 3.4 s to save on a loaded
# 2-core machine). Protocol 4 stores bytes as bytes; load() reads both. The global model file, written once per
# job, keeps torch's default: torch.load(weights_only=True), the safe way to read a plaintext model, refuses
# protocol 4.
PICKLE_PROTOCOL = 4


class ResumeError(RuntimeError):
    """The job to resume has no usable checkpoint, or the new job's settings differ from it."""


def save(run_dir: str, *, params: dict, round_number: int) -> None:
    """Write the checkpoint atomically: a server killed while writing leaves the previous one intact."""
    path = os.path.join(run_dir, C.CHECKPOINT_FILE)
    torch.save({"round": round_number, "params": dict(params)}, path + ".tmp", pickle_protocol=PICKLE_PROTOCOL)
    os.replace(path + ".tmp", path)


def save_global_model(params: dict, path: str) -> None:
    """The global model file: plaintext tensors, or under HE the encoded ciphertext only a hospital decrypts."""
    if is_encrypted(params):
        torch.save(dict(params), path)
    else:
        weights, _ = split_controls(params)  # SCAFFOLD's controls are not part of the model
        torch.save({k: torch.as_tensor(v) for k, v in weights.items()}, path)


def load_trusted(model, path: str, sha256_hex: str) -> None:
    """Load the job's public start into `model`, only if it is the very file the job was built with."""
    from consortium.public_start import load_pretrained, sha256

    if sha256(Path(path)) != sha256_hex:
        raise ValueError(f"pretrained: {path} differs from the checkpoint the job was built with (SHA-256)")
    load_pretrained(model, path)


def load(workspace, job_id: str) -> dict:
    """The last complete round of job `job_id` in this server's workspace: round, params and history."""
    run_dir = workspace.get_run_dir(job_id)
    path = os.path.join(run_dir, C.CHECKPOINT_FILE)
    if not os.path.isfile(path):
        raise ResumeError(
            f"cannot resume job {job_id}: no checkpoint {path} on this server (the job completed no round, or its "
            "workspace was removed); submit the job again without --resume"
        )
    state = torch.load(path, weights_only=False, map_location="cpu")
    history = read_history(run_dir)
    history["rounds"] = [r for r in history.get("rounds", []) if r["round"] <= state["round"]]
    return {"round": int(state["round"]), "params": state["params"], "history": history}


def read_history(run_dir: str) -> dict:
    """The run record (metrics.json) the workflow writes in its run directory; {} before the first write."""
    from consortium import runrecord

    return runrecord.read(run_dir, missing_ok=True)


def write_history(run_dir: str, history: dict) -> None:
    """Write the run record atomically: a reader (or a crash) never sees half a file."""
    from consortium import runrecord

    runrecord.write(run_dir, history)


def continued_history(old: dict, new: dict, job_id: str) -> dict:
    """The resumed job's record: the old job's rounds, then its own; refuses different settings."""
    old_meta, new_meta = old.get("meta", {}), new["meta"]
    differ = [k for k in SAME_SETTINGS if old_meta.get(k) != new_meta.get(k)]
    if differ:
        shown = "; ".join(f"{k}: {old_meta.get(k)!r} before, {new_meta.get(k)!r} now" for k in differ)
        raise ResumeError(f"cannot resume: the job's settings differ from the job it continues ({shown})")
    chain = list(old_meta.get("run_chain") or [])
    last = old["rounds"][-1]["round"] if old["rounds"] else -1
    merged = {**new, "rounds": list(old["rounds"])}
    merged["meta"] = {**new_meta, "run_chain": chain + [job_id]}
    merged["resumed"] = list(old.get("resumed", [])) + [{"job": job_id, "from_job": chain[-1], "after_round": last + 1}]
    for key in ("refused", "errors"):
        if key in old:
            merged[key] = old[key]
    return merged
