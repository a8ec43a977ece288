"""Server workflow: FLARE's FedAvg plus the task's initial model, per-site metrics and a final validation."""

from __future__ import annotations

import json
import os
import time

import torch
from nvflare.apis.fl_constant import FLContextKey, FLMetaKey
from nvflare.apis.job_def import JobMetaKey
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.workflows.cross_site_eval import CrossSiteEval
from nvflare.app_common.workflows.fedavg import FedAvg

from consortium import constants as C
from consortium.algorithms import split_controls, with_controls, zero_controls
from consortium.executors.trainer import state_to_numpy
from consortium.he.ckks import PAYLOAD_KEY
from consortium.tasks import get_task


class ConsortiumFedAvg(FedAvg):
    """FedAvg (ModelController) that builds the initial model from the task module, records what every
    site reports each round in `metrics.json`, saves `global_model.pt`, and ends with a validation of the
    final global model at every site."""

    def __init__(
        self,
        *args,
        task: str,
        seed: int,
        final_validation: bool = True,
        algorithm: str = "fedavg",
        finetune_epochs: int = 0,
        run_info: dict | None = None,
        **kwargs,
    ):
        kwargs.setdefault("persistor_id", "")
        kwargs.setdefault("save_filename", C.GLOBAL_MODEL_FILE)
        super().__init__(*args, **kwargs)
        self._task = task  # attribute names match the args so the job exporter finds them
        self.seed = seed
        self.final_validation = final_validation
        self.algorithm = algorithm
        self.finetune_epochs = finetune_epochs
        self.run_info = dict(run_info or {})  # job settings recorded with the results (job, he, ...)
        meta = {**self.run_info, "task": task, "algorithm": algorithm, "rounds": self.num_rounds}
        meta["metric"] = getattr(get_task(task), "METRIC_NAME", "score")
        self._history: dict = {"task": task, "num_rounds": self.num_rounds, "meta": meta, "rounds": [], "final": {}}
        self._round_sites: dict = {}
        self._round_start = 0.0
        self._global: FLModel | None = None

    # -- model: the architecture lives once, in the task module -------------------------------------
    def load_model(self) -> FLModel:
        torch.manual_seed(self.seed)
        model = get_task(self._task).build_model()
        params = state_to_numpy(model)
        if self.algorithm == "scaffold":  # the global control variate c starts at zero, travels with the model
            params = with_controls(params, zero_controls(model))
        return FLModel(params=params, params_type=ParamsType.FULL)

    def save_model_file(self, model: FLModel, filepath: str) -> None:
        if PAYLOAD_KEY in model.params:  # HE: the server only ever has ciphertext; a hospital decrypts it
            torch.save(dict(model.params), filepath)
        else:
            weights, _ = split_controls(model.params)  # SCAFFOLD's controls are not part of the model
            torch.save({k: torch.as_tensor(v) for k, v in weights.items()}, filepath)

    def sample_clients(self, num_clients=None):
        """Every connected site trains every round (the job's min_clients gates the start), except sites that
        refused to train for privacy reasons: they are dropped for the rest of the job."""
        refused = self._history.get("refused", {})
        sites = [s for s in super().sample_clients(None) if s not in refused]
        if refused and len(sites) < self._min_clients():  # never broadcast an empty target list (= every site)
            raise RuntimeError(self._too_few_sites(sites))
        return sites

    def _process_result(self, client_task, fl_ctx) -> None:
        """Log a site's own error text on the server, where the admin API can read it, and record it.
        A site's privacy refusal is not an error: the site is dropped and the round goes on without it."""
        result = client_task.result
        refusal = result.get_header(C.HEADER_SITE_REFUSED) if result is not None else None
        if refusal:
            self.fl_ctx = fl_ctx
            client_task.result = None
            self._drop_refusing_site(client_task.client.name, refusal)
            return
        message = result.get_header(C.HEADER_SITE_ERROR) if result is not None else None
        if message:
            site = client_task.client.name
            self.error(f"{C.SITE_ERROR_MARKER} {site}: {message}")
            self._history.setdefault("errors", {})[site] = message
            self._write_history()
        super()._process_result(client_task, fl_ctx)

    def _min_clients(self) -> int:
        meta = self.fl_ctx.get_prop(FLContextKey.JOB_META) or {}
        return int(meta.get(JobMetaKey.MIN_CLIENTS.value, 1) or 1)

    def _too_few_sites(self, remaining: list[str]) -> str:
        refused = ", ".join(sorted(self._history.get("refused", {})))
        return (
            f"job ends: after privacy refusals ({refused}) only {len(remaining)} site(s) can train "
            f"({', '.join(remaining) or 'none'}), fewer than the job's min_clients {self._min_clients()}. "
            "The refusing sites' reasons are above; the last global model is the one saved before this round."
        )

    def _drop_refusing_site(self, site: str, reason: str) -> None:
        """Record a site's refusal and stop sending it training; end the job if too few sites remain."""
        self.error(f"{C.SITE_ERROR_MARKER} {site} refused to train (dropped from the remaining rounds): {reason}")
        self._history.setdefault("refused", {})[site] = {"round": self.current_round, "reason": reason}
        remaining = [c.name for c in self.engine.get_clients() if c.name not in self._history["refused"]]
        if len(remaining) >= self._min_clients():
            self.info(f"[progress] {site} dropped; training goes on with {', '.join(remaining)}")
            self._write_history()
            return
        reason = self._too_few_sites(remaining)
        self._history["stopped"] = reason
        self._write_history()
        self.info(f"[progress] {reason}")
        self.panic(reason)
        # This callback keeps the round's task open: hold it until FedAvg's wait loop (every task_check_period)
        # has seen the abort, so the round is not aggregated from fewer than min_clients sites.
        time.sleep(5 * self._task_check_period + 0.5)

    # -- recording ------------------------------------------------------------------------------------
    def _aggregate_one_result(self, result: FLModel) -> bool:
        site = (result.meta or {}).get("client_name", "?")
        entry = dict(result.metrics or {})
        entry["weight"] = (result.meta or {}).get(FLMetaKey.NUM_STEPS_CURRENT_ROUND)  # aggregation weight (`weighting`)
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
            f"{self._history['meta']['metric']} of the model they received: {shown}"
        )
        self._write_history()
        return model

    def run(self) -> None:
        self._round_start = time.time()
        super().run()
        if self.final_validation and self._global is not None and not self.abort_signal.triggered:
            final = FLModel(params=self._global.params, params_type=ParamsType.FULL)
            if self.finetune_epochs:  # each site also fine-tunes the final model on its own data and keeps it
                final.meta[C.META_FINETUNE_EPOCHS] = self.finetune_epochs
            results = self.send_model_and_wait(task_name=C.TASK_VALIDATE, data=final)
            for res in results:
                site = (res.meta or {}).get("client_name", "?")
                self._history["final"][site] = dict(res.metrics or {})
            metric = self._history["meta"]["metric"]
            shown = ", ".join(
                f"{s} {m.get(C.METRIC_SCORE, float('nan')):.3f}" for s, m in self._history["final"].items()
            )
            self.info(f"[progress] final global model, validation {metric} per site: {shown}")
            if self.finetune_epochs:
                shown = ", ".join(
                    f"{s} {m.get(C.METRIC_PERSONAL_SCORE, float('nan')):.3f}" for s, m in self._history["final"].items()
                )
                self.info(f"[progress] after {self.finetune_epochs} fine-tuning epoch(s) at each site: {shown}")
            self._write_history()

    def _write_history(self) -> None:
        path = os.path.join(self.get_run_dir(), C.METRICS_FILE)
        with open(path, "w") as f:
            json.dump(self._history, f, indent=1, default=float)


class GlobalModelFile(ModelPersistor):
    """Read-only access to the global model the FedAvg workflow saved in the run directory (plaintext or,
    with HE, ciphertext that only the sites can decrypt), for the cross-site evaluation that follows it."""

    def load_model(self, fl_ctx):
        return self.get_model(C.GLOBAL_MODEL_FILE, fl_ctx)

    def save_model(self, model_learnable, fl_ctx):
        raise RuntimeError("GlobalModelFile is read-only")

    def get_model(self, model_file, fl_ctx):
        run_dir = fl_ctx.get_engine().get_workspace().get_run_dir(fl_ctx.get_job_id())
        path = os.path.join(run_dir, model_file)
        if not os.path.isfile(path):
            raise FileNotFoundError(f"{path}: no global model; the training workflow must run before evaluation")
        params = torch.load(path, weights_only=False, map_location="cpu")
        if PAYLOAD_KEY not in params:
            params = {k: v.numpy() for k, v in params.items()}
        return make_model_learnable(params, {})


class ConsortiumCrossSiteEval(CrossSiteEval):
    """FLARE's cross-site evaluation after training: the global model and every site's own model (its last
    local model, or its fine-tuned one) are evaluated on every site's validation data.

    With HE the server forwards ciphertexts only; each site decrypts with its own key before evaluating.
    The matrix goes to `cross_site.json` and into `metrics.json` under "cross_site"."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("server_models", [C.GLOBAL_MODEL_FILE])
        super().__init__(*args, **kwargs)

    def initialize(self, fl_ctx):
        super().initialize(fl_ctx)
        self.persistor = GlobalModelFile()

    def save_results(self):
        super().save_results()
        global_name = C.GLOBAL_MODEL_FILE
        scores: dict = {}
        for data_site, by_model in self._json_val_results.items():
            for owner, metrics in by_model.items():
                model = "global" if owner == global_name else owner
                scores.setdefault(model, {})[data_site] = (metrics or {}).get(C.METRIC_SCORE)
        sites = sorted(self._json_val_results)
        models = ["global"] + [s for s in sorted(scores) if s != "global"]
        matrix = {"models": models, "sites": sites, "scores": {m: scores.get(m, {}) for m in models}}
        run_dir = self.get_run_dir()
        with open(os.path.join(run_dir, C.CROSS_SITE_FILE), "w") as f:
            json.dump(matrix, f, indent=1)
        path = os.path.join(run_dir, C.METRICS_FILE)
        history = {}
        if os.path.isfile(path):
            with open(path) as f:
                history = json.load(f)
        history["cross_site"] = matrix
        with open(path, "w") as f:
            json.dump(history, f, indent=1, default=float)
        for m in models:
            shown = ", ".join(f"{s} {v:.3f}" for s, v in sorted(matrix["scores"][m].items()) if v is not None)
            self.info(f"[progress] cross-site: {m} model on each site's data: {shown}")
