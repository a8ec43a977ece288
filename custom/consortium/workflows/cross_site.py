"""Cross-site evaluation after training: every model on every site's data, among the sites still present."""

from __future__ import annotations

import json
import os

import torch
from nvflare.app_common.abstract.model import make_model_learnable
from nvflare.app_common.abstract.model_persistor import ModelPersistor
from nvflare.app_common.workflows.cross_site_eval import CrossSiteEval

from consortium import constants as C
from consortium import runrecord
from consortium.he.wire import PAYLOAD_KEY
from consortium.workflows.checkpoint import read_history


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

    def __init__(self, *args, timeout: int = 600, **kwargs):
        kwargs.setdefault("server_models", [C.GLOBAL_MODEL_FILE])
        # a site that fails or is lost is left out of the matrix; it never ends the evaluation of the others
        kwargs.setdefault("ignore_result_error", True)
        kwargs.setdefault("submit_model_timeout", timeout)
        kwargs.setdefault("validation_timeout", timeout)
        super().__init__(*args, **kwargs)
        self.timeout = timeout

    def initialize(self, fl_ctx):
        super().initialize(fl_ctx)
        self.persistor = GlobalModelFile()

    def run(self) -> None:
        """Evaluate among the sites that were present at the end of training (recorded by ConsortiumFedAvg):
        a site lost during training would hold every task to its timeout."""
        present = read_history(self.get_run_dir()).get("present")
        if present is not None:
            left_out = sorted(set(self._participating_clients) - set(present))
            if left_out:
                self.info(f"[progress] cross-site: left out (absent at the end of training): {', '.join(left_out)}")
            self._participating_clients = [c for c in self._participating_clients if c in present]
            self._client_models = {c: None for c in self._participating_clients}
            self._val_results = {c: {} for c in self._participating_clients}
        super().run()

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
        history = read_history(run_dir)
        history[runrecord.CROSS_SITE] = matrix
        runrecord.write(run_dir, history)  # atomic: a crash never leaves half a record
        for m in models:
            shown = ", ".join(f"{s} {v:.3f}" for s, v in sorted(matrix["scores"][m].items()) if v is not None)
            self.info(f"[progress] cross-site: {m} model on each site's data: {shown}")
