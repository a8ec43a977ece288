"""A site's side of a server-optimizer job (FedAdam, FedYogi, FedAdagrad): its copy of the server's state.

Round 0 brings the initial model w_0; every later train task brings the sites' averaged pseudo-gradient of the
round before (task meta META_AGGREGATE_ROUND), which this site steps its state (w_t, m, v) with, exactly as
every other site does (server_opt.step). The state is on the site's disk after each step, per job, so a
restarted site goes on; a site whose state is not at the aggregate's round (it missed one) refuses to train
from another model: its error drops it from the round, with the reason, at the server.
"""

from __future__ import annotations

import os

import numpy as np
from nvflare.apis.fl_constant import FLMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType

from consortium import constants as C
from consortium.server_opt import ServerOptSettings, ServerOptState, as_model, pseudo_gradient, start, step


class ServerStateMissing(ValueError):
    """This site does not hold the server optimizer's state of the round the aggregate belongs to."""


def _path(root: str, job_id: str) -> str:
    return os.path.join(root, C.SERVER_OPT_FOLDER, f"{job_id}.npz")


def save(root: str, job_id: str, state: ServerOptState) -> None:
    """Write the state atomically (a site killed while writing keeps the previous one)."""
    path = _path(root, job_id)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    arrays = {f"{part}/{k}": a for part in ("w", "m", "v") for k, a in getattr(state, part).items()}
    with open(path + ".tmp", "wb") as f:
        np.savez(f, __round__=np.array(state.round), **arrays)
    os.replace(path + ".tmp", path)


def load(root: str, chain: list[str]) -> ServerOptState | None:
    """The state of the latest job of this run (this one, else the jobs it continues) saved here, else None."""
    for job_id in reversed(chain):
        path = _path(root, job_id)
        if os.path.isfile(path):
            with np.load(path) as data:
                parts = {"w": {}, "m": {}, "v": {}}
                for key in data.files:
                    if key != "__round__":
                        part, name = key.split("/", 1)
                        parts[part][name] = data[key]
                return ServerOptState(round=int(data["__round__"]), **parts)
    return None


class SiteServerStep:
    """Turns what a train task brings into this round's global model, and the trained model into w_i - w_t."""

    def __init__(self, settings: dict):
        self.settings = ServerOptSettings.from_dict(settings)
        self.state: ServerOptState | None = None

    def global_model(self, incoming: FLModel, weights: dict, *, root: str, job_id: str) -> dict:
        """w_t: the initial model (round 0), or the saved state stepped with the received aggregate."""
        meta, number = incoming.meta or {}, incoming.current_round or 0
        aggregate_of = meta.get(C.META_AGGREGATE_ROUND)
        if aggregate_of is None:
            if number != 0:
                raise ValueError(
                    f"server optimizer: round {number + 1} brought a model, not the sites' averaged update; the "
                    "server must run this job's workflow (server_optimizer) for every site"
                )
            self.state = start(self.settings, 0, weights)
        else:
            state = self.state or load(root, [*(meta.get(C.META_RUN_CHAIN) or []), job_id])
            if state is None or state.round != int(aggregate_of):
                held = "no state" if state is None else f"the global model of round {state.round + 1}"
                raise ServerStateMissing(
                    f"server optimizer ({self.settings.name}): the server sent the update of round "
                    f"{int(aggregate_of) + 1}, but this site holds {held} (it missed an aggregate): it cannot "
                    "rebuild the global model the other sites hold and does not train from another one. It "
                    "sits out the rest of this job; it rejoins in the next job (FedAvgM sites need no such state)"
                )
            self.state = step(self.settings, state, weights)
        save(root, job_id, self.state)
        return as_model(self.state, weights)

    @staticmethod
    def final(incoming: FLModel) -> bool:
        """Whether the task is the job's last step: apply it and send w_T, without training."""
        return bool((incoming.meta or {}).get(C.META_FINAL_STEP))

    def outgoing(self, local: dict) -> dict:
        return pseudo_gradient(local, self.state)

    def report(self) -> dict:
        """The fingerprint of the global model this site holds (equal at every site: checked by the server)."""
        return {C.METRIC_MODEL_SHA: self.state.fingerprint()}

    def final_reply(self, like: dict, meta: dict) -> FLModel:
        """w_T, weight 1: the server averages identical models (encrypted under HE) into the global model."""
        meta = {FLMetaKey.NUM_STEPS_CURRENT_ROUND: 1, **meta}
        return FLModel(params=as_model(self.state, like), params_type=ParamsType.FULL, metrics=self.report(), meta=meta)
