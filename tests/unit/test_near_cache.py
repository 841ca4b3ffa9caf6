"""NearCache: expiry, eviction by person, the epoch guard and the off switch."""

from __future__ import annotations

from services.identity.adapters.near_cache import NearCache


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def switched_on(ttl_s: float = 30.0, max_entries: int = 10, clock: Clock | None = None) -> NearCache:
    cache = NearCache(ttl_s, max_entries, clock or Clock())
    cache.switch_on()
    return cache


def test_off_until_switched_on_and_off_again() -> None:
    cache = NearCache(30.0, 10)
    cache.put("COOKIE:a", "p1", cache.epoch)
    assert cache.get("COOKIE:a") is None
    cache.switch_on()
    cache.put("COOKIE:a", "p1", cache.epoch)
    assert cache.get("COOKIE:a") == "p1"
    cache.switch_off()
    assert cache.get("COOKIE:a") is None and len(cache) == 0


def test_a_zero_ttl_never_switches_on() -> None:
    cache = NearCache(0, 10)
    cache.switch_on()
    cache.put("COOKIE:a", "p1", cache.epoch)
    assert not cache.enabled and cache.get("COOKIE:a") is None


def test_entries_expire_after_the_ttl() -> None:
    clock = Clock()
    cache = switched_on(ttl_s=30.0, clock=clock)
    cache.put("COOKIE:a", "p1", cache.epoch)
    clock.now += 29.9
    assert cache.get("COOKIE:a") == "p1"
    clock.now += 0.2
    assert cache.get("COOKIE:a") is None and len(cache) == 0


def test_invalidating_a_person_drops_every_identifier_pointing_at_it() -> None:
    cache = switched_on()
    for identifier in ("COOKIE:a", "DEVICE:b"):
        cache.put(identifier, "loser", cache.epoch)
    cache.put("COOKIE:c", "other", cache.epoch)
    cache.invalidate_persons(["loser"])
    assert cache.get("COOKIE:a") is None and cache.get("DEVICE:b") is None
    assert cache.get("COOKIE:c") == "other"


def test_an_answer_read_before_an_invalidation_is_not_stored() -> None:
    cache = switched_on()
    epoch = cache.epoch  # a lookup starts...
    cache.invalidate_persons(["loser"])  # ...a merge elsewhere is announced meanwhile...
    cache.put("COOKIE:a", "loser", epoch)  # ...and the lookup's (possibly stale) answer arrives
    assert cache.get("COOKIE:a") is None


def test_the_oldest_entry_goes_first_when_full() -> None:
    cache = switched_on(max_entries=2)
    for index in range(3):
        cache.put(f"COOKIE:{index}", f"p{index}", cache.epoch)
    assert cache.get("COOKIE:0") is None
    assert cache.get("COOKIE:1") == "p1" and cache.get("COOKIE:2") == "p2"
    cache.invalidate_persons(["p0", "p1"])  # the reverse index forgot p0 when it was evicted
    assert len(cache) == 1


def test_moving_an_identifier_to_another_person_updates_the_reverse_index() -> None:
    cache = switched_on()
    cache.put("COOKIE:a", "p1", cache.epoch)
    cache.put("COOKIE:a", "p2", cache.epoch)
    cache.invalidate_persons(["p1"])
    assert cache.get("COOKIE:a") == "p2"
