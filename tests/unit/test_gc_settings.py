"""The garbage collector's thresholds the shared bootstrap sets, and the reason they matter: every
grpc.aio RPC leaves a reference cycle that only the collector frees."""

from __future__ import annotations

import gc

import grpc
import pytest

from services.common.server import gc_thresholds
from services.common.settings import SettingsError, load_settings
from services.decision.settings import DecisionSettings
from services.identity.settings import IdentitySettings


def test_the_middle_generation_is_collected_per_million_young_objects_whatever_their_size() -> None:
    assert gc_thresholds(50_000) == (50_000, 20, 100)
    assert gc_thresholds(2_000) == (2_000, 500, 100)
    assert gc_thresholds(3_000_000) == (3_000_000, 1, 100)


def test_decision_keeps_a_small_young_generation_and_throughput_services_a_large_one() -> None:
    assert load_settings(DecisionSettings, {}).gc_young_objects == 2_000
    assert load_settings(IdentitySettings, {}).gc_young_objects == 50_000
    assert load_settings(DecisionSettings, {"RAPPORT_GC_YOUNG_OBJECTS": "8000"}).gc_young_objects == 8_000


def test_a_young_generation_too_small_to_be_useful_is_refused() -> None:
    with pytest.raises(SettingsError, match="RAPPORT_GC_YOUNG_OBJECTS"):
        load_settings(IdentitySettings, {"RAPPORT_GC_YOUNG_OBJECTS": "10"})


async def test_every_grpc_aio_call_leaves_garbage_only_the_collector_frees() -> None:
    """If this starts failing, grpc.aio no longer leaves a cycle per call, and the small young
    generation of latency-bound services (services/common/server.py) can be revisited."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (grpc.method_handlers_generic_handler("probe.Echo", {"Echo": grpc.unary_unary_rpc_method_handler(_echo)}),)
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    calls = 50
    was_enabled = gc.isenabled()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            echo = channel.unary_unary("/probe.Echo/Echo")
            await echo(b"warm-up")
            gc.collect()
            gc.disable()
            for _ in range(calls):
                assert await echo(b"ping") == b"ping"
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        left_in_cycles = sum(1 for thing in gc.garbage if type(thing).__name__ == "_HandlerCallDetails")
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        if was_enabled:
            gc.enable()
        await server.stop(None)
    assert left_in_cycles >= calls


async def _echo(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    return request
