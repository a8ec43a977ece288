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
        check_payload(he, site)
        if self._layout is not None and he["layout"] != self._layout:
            raise ValueError(f"{site} sent a model with a different layer layout than the other sites")
        self._layout = he["layout"]
        self._exposed_dtypes = he.get("exposed_dtypes", {})
        plain = {n: np.asarray(v, dtype=np.float64) for n, v in model.params.items() if n != PAYLOAD_KEY}
        if any(not np.all(np.isfinite(v)) for v in plain.values()):
            raise ValueError(f"{site} sent exposed (unencrypted) layers with NaN or Inf")
        self._chunks = add_encrypted(self._server_context(), self._chunks, he["chunks"])  # all or nothing
        for name, value in plain.items():
            self._plain[name] = self._plain.get(name, 0.0) + value
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


def check_payload(he, site: str) -> None:
    """Refuse a malformed or truncated encrypted update with a reason, before it touches the sum."""
    if not isinstance(he, dict) or not {"chunks", "layout", "weight"} <= set(he):
        raise ValueError(f"{site} sent a malformed encrypted update (expected chunks, layout and weight)")
    chunks, weight = he["chunks"], he["weight"]
    if not isinstance(chunks, list) or not chunks or not all(isinstance(c, bytes) and c for c in chunks):
        raise ValueError(f"{site} sent an encrypted update without ciphertexts, or with empty ones")
    if not isinstance(weight, (int, float)) or not np.isfinite(weight) or weight <= 0:
        raise ValueError(f"{site} sent an encrypted update with aggregation weight {weight!r}; it must be > 0")
