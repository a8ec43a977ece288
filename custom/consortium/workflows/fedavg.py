"""Server workflow: FLARE's FedAvg plus the task's initial model, per-site metrics and a final validation."""

from __future__ import annotations

import json
import os
import time

import torch
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.workflows.fedavg import FedAvg

from consortium import constants as C
from consortium.executors.trainer import state_to_numpy
from consortium.he.ckks import PAYLOAD_KEY
from consortium.tasks import get_task


class ConsortiumFedAvg(FedAvg):
    """FedAvg (ModelController) that builds the initial model from the task module, records what every
    site reports each round in `metrics.json`, saves `global_model.pt`, and ends with a validation of the
    final global model at every site."""

    def __init__(self, *args, task: str, seed: int, final_validation: bool = True, **kwargs):
        kwargs.setdefault("persistor_id", "")
        kwargs.setdefault("save_filename", C.GLOBAL_MODEL_FILE)
        super().__init__(*args, **kwargs)
        self._task = task  # attribute names match the args so the job exporter finds them
        self.seed = seed
        self.final_validation = final_validation
        self._history: dict = {"task": task, "num_rounds": self.num_rounds, "rounds": [], "final": {}}
        self._round_sites: dict = {}
        self._round_start = 0.0
        self._global: FLModel | None = None

    # -- model: the architecture lives once, in the task module -------------------------------------
    def load_model(self) -> FLModel:
        torch.manual_seed(self.seed)
        return FLModel(params=state_to_numpy(get_task(self._task).build_model()), params_type=ParamsType.FULL)

    def save_model_file(self, model: FLModel, filepath: str) -> None:
        if PAYLOAD_KEY in model.params:  # HE: the server only ever has ciphertext; a hospital decrypts it
            torch.save(dict(model.params), filepath)
        else:
            torch.save({k: torch.as_tensor(v) for k, v in model.params.items()}, filepath)

    def sample_clients(self, num_clients=None):
        """Every connected site trains every round (the job's min_clients gates the start)."""
        return super().sample_clients(None)

    def _process_result(self, client_task, fl_ctx) -> None:
        """Log a site's own error text on the server, where the admin API can read it, and record it."""
        result = client_task.result
        message = result.get_header(C.HEADER_SITE_ERROR) if result is not None else None
        if message:
            site = client_task.client.name
            self.error(f"{C.SITE_ERROR_MARKER} {site}: {message}")
            self._history.setdefault("errors", {})[site] = message
            self._write_history()
        super()._process_result(client_task, fl_ctx)

    # -- recording ------------------------------------------------------------------------------------
    def _aggregate_one_result(self, result: FLModel) -> bool:
        site = (result.meta or {}).get("client_name", "?")
        entry = dict(result.metrics or {})
        entry["steps"] = (result.meta or {}).get("NUM_STEPS_CURRENT_ROUND")
        self._round_sites[site] = entry
        return super()._aggregate_one_result(result)

    def update_model(self, model, aggr_result):
        model = super().update_model(model, aggr_result)
        self._global = model
        sites = self._round_sites
        self._round_sites = {}
        dice = {s: m.get(C.METRIC_SCORE) for s, m in sites.items()}
        seconds, self._round_start = time.time() - self._round_start, time.time()
        self._history["rounds"].append({"round": self.current_round, "seconds": seconds, "sites": sites})
        shown = ", ".join(f"{s} {d:.3f}" for s, d in sorted(dice.items()) if d is not None)
        self.info(
            f"[progress] round {self.current_round + 1}/{self.num_rounds}: {len(sites)} sites reported; "
            f"Dice of the model they received: {shown}"
        )
        self._write_history()
        return model

    def run(self) -> None:
        self._round_start = time.time()
        super().run()
        if self.final_validation and self._global is not None and not self.abort_signal.triggered:
            results = self.send_model_and_wait(task_name=C.TASK_VALIDATE, data=self._global)
            for res in results:
                site = (res.meta or {}).get("client_name", "?")
                self._history["final"][site] = dict(res.metrics or {})
            shown = ", ".join(
                f"{s} {m.get(C.METRIC_SCORE, float('nan')):.3f}" for s, m in self._history["final"].items()
            )
            self.info(f"[progress] final global model, validation Dice per site: {shown}")
            self._write_history()

    def _write_history(self) -> None:
        path = os.path.join(self.get_run_dir(), C.METRICS_FILE)
        with open(path, "w") as f:
            json.dump(self._history, f, indent=1, default=float)
