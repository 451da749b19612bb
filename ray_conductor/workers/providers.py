"""litellm custom providers, registered inside each process that calls litellm (litellm's
`custom_provider_map` is per process, so every `WorkerProxy` actor registers its own).

`replay/<model>` answers from a recorded replay pool, so a replay worker goes through exactly
the same proxy path (limits, retries, accounting) as a live one. The pool spec arrives as the
call's `api_base` (a worker's config, or the pool config's `replay` default); the query id
arrives in litellm's `metadata`, which litellm hands to the provider in `litellm_params`.
"""

from __future__ import annotations

from typing import Any, Callable

from ray_conductor.errors import ConductorError
from ray_conductor.workers.base import Completion
from ray_conductor.workers.proxy import litellm_module

litellm = litellm_module()
REPLAY = "replay"
_POOLS: dict[str, Any] = {}  # spec -> loaded ReplayPool, once per process
Loader = Callable[[str], Any]


def load_replay_pool(spec: str, loader: Loader | None = None) -> Any:
    """The `ReplayPool` of `spec`, loaded once per process by `loader` (the data layer's
    `ray_conductor.data.pools.replay_pool`, injected by whoever builds the proxy: workers do
    not import the data layer)."""
    if spec not in _POOLS:
        if loader is None:
            raise ConductorError(f"replay pool {spec!r} is not loaded and no loader was "
                                 "given: register the provider with loader=replay_pool",
                                 code="no_replay_loader")
        _POOLS[spec] = loader(spec)
    return _POOLS[spec]


class ReplayProvider(litellm.CustomLLM):  # type: ignore[misc, name-defined]
    """Serves `replay/<worker>` from a pool: `pool` if given, else the one `api_base`
    (or `default_spec`) names."""

    def __init__(self, pool: Any = None, default_spec: str | None = None,
                 loader: Loader | None = None):
        super().__init__()
        self.pool, self.default_spec, self.loader = pool, default_spec, loader

    def _pool(self, api_base: str | None) -> Any:
        if self.pool is not None:
            return self.pool
        spec = api_base or self.default_spec
        if not spec:
            raise litellm.BadRequestError(
                message="replay worker without a pool: set the worker's api_base or the "
                        "pool config's `replay` to a pool spec", model="replay",
                llm_provider=REPLAY)
        return load_replay_pool(spec, self.loader)

    async def acompletion(self, model: str, messages: list, api_base: str | None,
                          custom_prompt_dict: dict, model_response: Any, print_verbose: Any,
                          encoding: Any, api_key: Any, logging_obj: Any,
                          optional_params: dict, *args: Any, litellm_params: dict | None = None,
                          **kw: Any) -> Any:
        metadata = dict((litellm_params or {}).get("metadata") or {})
        try:
            c = await self._pool(api_base).complete(model, messages, metadata=metadata)
        except ConductorError as e:  # unknown worker or query: as deterministic as a hole
            c = Completion(worker=model, error=str(e), error_code=e.code)
        if c.error:  # a recorded hole: replay is deterministic, so not worth a retry
            raise litellm.NotFoundError(
                message=f"replay {model}: {c.error} ({c.error_code})", model=model,
                llm_provider=REPLAY)
        model_response.model = f"{REPLAY}/{model}"
        model_response.choices[0].message.content = c.text
        model_response.usage = litellm.Usage(prompt_tokens=c.input_tokens,
                                             completion_tokens=c.output_tokens,
                                             total_tokens=c.input_tokens + c.output_tokens)
        model_response._hidden_params["response_cost"] = c.cost
        return model_response

    def completion(self, *args: Any, **kw: Any) -> Any:
        raise litellm.BadRequestError(message="replay/ workers answer only through "
                                      "litellm.acompletion", model="replay",
                                      llm_provider=REPLAY)


def register(pool: Any = None, default_spec: str | None = None,
             loader: Loader | None = None) -> Any:
    """Register (or replace) the `replay` provider in this process; returns the handler."""
    handler = ReplayProvider(pool=pool, default_spec=default_spec, loader=loader)
    others = [p for p in litellm.custom_provider_map if p.get("provider") != REPLAY]
    litellm.custom_provider_map = others + [{"provider": REPLAY, "custom_handler": handler}]
    return handler
