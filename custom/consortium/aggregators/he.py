"""Server-side HE aggregation: add the sites' ciphertexts; no multiplication, no key that can decrypt.

A thin adapter between FLARE's ModelAggregator and he/wire.py, which owns the format, its checks and the sum."""

from __future__ import annotations

from nvflare.app_common.abstract.fl_model import FLModel, ParamsType
from nvflare.app_common.aggregators.model_aggregator import ModelAggregator

from consortium.he.contexts import SERVER_CONTEXT, HEContextError, load_context
from consortium.he.wire import EncryptedSum, EncryptedUpdate, check_payload  # noqa: F401  (check_payload: kept here)


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
        site = (model.meta or {}).get("client_name", "a site")  # set by FLARE's ModelController
        update = EncryptedUpdate.decode(model.params, site)
        if self._sum is None:
            self._sum = EncryptedSum(self._server_context())
        self._sum.add(update, site)

    def aggregate_model(self) -> FLModel:
        if self._sum is None:
            raise ValueError("no site model was accepted this round")
        result = FLModel(params=self._sum.result().encode(), params_type=ParamsType.FULL)
        self.reset_stats()
        return result

    def reset_stats(self) -> None:
        self._sum: EncryptedSum | None = None
