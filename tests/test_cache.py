"""The model cache on its own: budget, LRU order, single-flight loads, leases and unloads."""

from __future__ import annotations

import asyncio
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from serve.cache import AlreadyLoaded, DoesNotFit, Loaded, ModelCache, NotLoaded


class CountingLoader:
    """Loads a stand-in model of a given size and counts how often each name was really loaded."""

    def __init__(self, delay: float = 0.0) -> None:
        self.calls: dict[str, int] = {}
        self.delay = delay
        self.lock = threading.Lock()

    def __call__(self, name: str, size: int):
        def load() -> Loaded:
            with self.lock:
                self.calls[name] = self.calls.get(name, 0) + 1
            threading.Event().wait(self.delay)
            return Loaded(model=f"model:{name}", size=size)

        return load


def run(coro):
    return asyncio.run(coro)


@pytest.fixture
def pool():
    with ThreadPoolExecutor(4) as executor:
        yield executor


def test_concurrent_loads_of_one_model_load_it_once(pool):
    loader = CountingLoader(delay=0.2)

    async def main():
        cache = ModelCache(1000, pool)
        entries = await asyncio.gather(
            *(cache.load("a", "u", loader("a", 10), estimate=10) for _ in range(20))
        )
        return cache, entries

    cache, entries = run(main())
    assert loader.calls == {"a": 1}
    assert all(e is entries[0] for e in entries)
    assert len(cache) == 1 and cache.used_bytes == 10


def test_loading_a_resident_model_again_is_a_conflict(pool):
    loader = CountingLoader()

    async def main():
        cache = ModelCache(1000, pool)
        await cache.load("a", "u", loader("a", 10), estimate=10)
        with pytest.raises(AlreadyLoaded):
            await cache.load("a", "u", loader("a", 10), estimate=10)

    run(main())
    assert loader.calls == {"a": 1}


def test_lru_evicts_least_recently_used_and_budget_holds(pool):
    loader = CountingLoader()
    events: list[tuple[str, str]] = []

    async def main():
        cache = ModelCache(300, pool, eviction="lru")
        cache.listeners.append(lambda name, event, _: events.append((name, event)))
        for name in "abc":
            await cache.load(name, "u", loader(name, 100), estimate=100)
        with cache.lease("a"):  # a becomes most recently used; b is now the oldest
            pass
        await cache.load("d", "u", loader("d", 100), estimate=100)
        assert cache.sorted_names() == ["a", "c", "d"]
        await cache.load("e", "u", loader("e", 150), estimate=100)
        assert cache.used_bytes <= cache.budget
        return cache

    cache = run(main())
    assert [n for n, e in events if e == "evict"] == ["b", "c", "a"]
    assert [e.name for e in cache.entries()] == ["e", "d"]
    assert cache.used_bytes == 250


def test_reject_policy_answers_does_not_fit_and_keeps_everything(pool):
    loader = CountingLoader()

    async def main():
        cache = ModelCache(250, pool, eviction="reject")
        await cache.load("a", "u", loader("a", 100), estimate=100)
        await cache.load("b", "u", loader("b", 100), estimate=100)
        with pytest.raises(DoesNotFit) as info:
            await cache.load("c", "u", loader("c", 100), estimate=100)
        assert cache.sorted_names() == ["a", "b"]
        return str(info.value)

    message = run(main())
    assert "250" in message and "c" not in loader.calls


def test_measured_size_over_the_estimate_still_respects_the_budget(pool):
    loader = CountingLoader()

    async def main():
        cache = ModelCache(250, pool, eviction="reject")
        await cache.load("a", "u", loader("a", 100), estimate=100)
        with pytest.raises(DoesNotFit):
            await cache.load("b", "u", loader("b", 200), estimate=50)
        assert cache.sorted_names() == ["a"] and cache.used_bytes == 100

    run(main())


def test_max_models_caps_the_count(pool):
    loader = CountingLoader()

    async def main():
        cache = ModelCache(10**9, pool, max_models=2)
        for name in "abcd":
            await cache.load(name, "u", loader(name, 1), estimate=1)
        return cache.sorted_names()

    assert run(main()) == ["c", "d"]


def test_a_model_bigger_than_the_budget_is_refused_before_loading(pool):
    loader = CountingLoader()

    async def main():
        cache = ModelCache(100, pool)
        with pytest.raises(DoesNotFit, match="whole budget"):
            await cache.load("big", "u", loader("big", 500), estimate=500)

    run(main())
    assert loader.calls == {}


def test_failed_load_reaches_every_waiter_and_leaves_nothing(pool):
    def broken() -> Loaded:
        threading.Event().wait(0.1)
        raise ValueError("corrupt artifact")

    async def main():
        cache = ModelCache(100, pool)
        results = await asyncio.gather(
            *(cache.load("x", "u", broken, estimate=1) for _ in range(5)), return_exceptions=True
        )
        assert all(isinstance(r, ValueError) for r in results)
        assert len(cache) == 0 and cache.used_bytes == 0 and not cache.is_loading("x")

    run(main())


def test_unload_waits_for_in_flight_leases(pool):
    loader = CountingLoader()
    order: list[str] = []

    async def main():
        cache = ModelCache(100, pool)
        await cache.load("a", "u", loader("a", 10), estimate=10)

        async def invocation():
            with cache.lease("a") as entry:
                await asyncio.sleep(0.2)
                order.append(f"invoke done with {entry.model}")

        task = asyncio.create_task(invocation())
        await asyncio.sleep(0.05)
        await cache.unload("a")
        order.append("unloaded")
        await task
        with pytest.raises(NotLoaded), cache.lease("a"):
            pass

    run(main())
    assert order == ["invoke done with model:a", "unloaded"]


def test_replace_swaps_a_model_while_old_leases_finish_on_the_old_one(pool):
    loader = CountingLoader()

    async def main():
        cache = ModelCache(100, pool)
        await cache.load("a", "v1", loader("a", 10), estimate=10)
        with cache.lease("a") as old:
            await cache.load("a", "v2", lambda: Loaded("model:a2", 20), estimate=20, replace=True)
            assert old.model == "model:a"
        assert cache.get("a").model == "model:a2" and cache.used_bytes == 20

    run(main())


def test_a_caller_that_stops_waiting_does_not_cancel_the_load(pool):
    loader = CountingLoader(delay=0.3)

    async def main():
        cache = ModelCache(100, pool)
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(cache.load("a", "u", loader("a", 10), estimate=10), 0.05)
        entry = await cache.load("a", "u", loader("a", 10), estimate=10)
        assert entry.model == "model:a"

    run(main())
    assert loader.calls == {"a": 1}


def test_a_failed_load_evicts_nothing(pool):
    loader = CountingLoader()

    def corrupt() -> Loaded:
        raise ValueError("not a model")

    async def main():
        cache = ModelCache(200, pool, eviction="lru", max_models=2)
        await cache.load("a", "u", loader("a", 100), estimate=100)
        await cache.load("b", "u", loader("b", 100), estimate=100)
        with pytest.raises(ValueError):
            await cache.load("bad", "u", corrupt, estimate=100)
        return cache.sorted_names()

    assert run(main()) == ["a", "b"]


def test_a_resident_model_grows_only_into_room(pool):
    loader = CountingLoader()

    async def main():
        lru = ModelCache(300, pool, eviction="lru")
        for name in "ab":
            await lru.load(name, "u", loader(name, 100), estimate=100)
        model_b = lru.get("b").model
        assert lru.grow("b", model_b, 150)  # evicts a, the least recently used, to make room
        assert lru.sorted_names() == ["b"] and lru.used_bytes == 250 and lru.get("b").size == 250
        assert not lru.grow("b", model_b, 100)  # more than the whole budget allows
        assert not lru.grow("b", "another model", 1)  # a replaced model does not grow its successor

        reject = ModelCache(300, pool, eviction="reject")
        for name in "ab":
            await reject.load(name, "u", loader(name, 100), estimate=100)
        assert not reject.grow("a", reject.get("a").model, 150)  # SageMaker decides evictions, not us
        assert reject.grow("a", reject.get("a").model, 50)
        assert reject.used_bytes == 250 and reject.sorted_names() == ["a", "b"]

    run(main())
