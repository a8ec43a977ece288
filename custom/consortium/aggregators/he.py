"""Server-side HE aggregation: add the sites' ciphertexts; no multiplication, no key that can decrypt."""

from __future__ import annotations

import numpy as np
from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator

from consortium.he.ckks import PAYLOAD_KEY, add_encrypted
from consortium.he.contexts import SERVER_CONTEXT, HEContextError, load_context


class HESumAggregator(ModelAggregator):
    """Sums encrypted, already-weighted site updates and their weights; sites divide after decrypting."""

    def __init__(self) -> None:
        super().__init__()
        self._context = None
        self.reset_stats()

    def _server_context(self):
        if self._context is None:
            context = load_context(self.fl_ctx, SERVER_CONTEXT)
            if context.has_secret_key():
                raise HEContextError(f"{SERVER_CONTEXT} holds a secret key: the server must not be able to decrypt")
            self._context = context
        return self._context

    def accept_model(self, model: FLModel) -> None:
        site = (model.meta or {}).get("client_name", "a site")
        he = (model.params or {}).get(PAYLOAD_KEY)
        if he is None:
            raise ValueError(f"{site} sent unencrypted weights; every site must run the job's HE filters")
        if self._layout is not None and he["layout"] != self._layout:
            raise ValueError(f"{site} sent a model with a different layer layout than the other sites")
        self._layout = he["layout"]
        self._exposed_dtypes = he.get("exposed_dtypes", {})
        self._chunks = add_encrypted(self._server_context(), self._chunks, he["chunks"])
        for name, value in model.params.items():
            if name != PAYLOAD_KEY:
                self._plain[name] = self._plain.get(name, 0.0) + np.asarray(value, dtype=np.float64)
        self._weight += float(he["weight"])

    def aggregate_model(self) -> FLModel:
        if self._chunks is None:
            raise ValueError("no site model was accepted this round")
        payload = {"chunks": [c.serialize() for c in self._chunks], "layout": self._layout, "weight": self._weight}
        payload["exposed_dtypes"] = self._exposed_dtypes
        result = FLModel(params={**self._plain, PAYLOAD_KEY: payload}, params_type=ParamsType.FULL)
        self.reset_stats()
        return result

    def reset_stats(self) -> None:
        self._chunks, self._layout, self._plain, self._weight = None, None, {}, 0.0
        self._exposed_dtypes: dict = {}
