"""What a worker process keeps per job or per API (workers/lru.py), and the setting that sizes it."""

from __future__ import annotations

from app.config import Settings
from workers.lru import Lru


def test_the_least_recently_used_entry_goes_first():
    cache: Lru[str, int] = Lru(2)
    cache.put("a", 1)
    cache.put("b", 2)
    assert cache.get("a") == 1  # read: now the most recently used
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 1 and cache.get("c") == 3
    assert len(cache) == 2


def test_storing_an_entry_again_makes_it_the_most_recent():
    cache: Lru[str, int] = Lru(2)
    cache.put("a", 1)
    cache.put("b", 2)
    cache.put("a", 10)
    cache.put("c", 3)
    assert "b" not in cache and cache.get("a") == 10


def test_a_miss_is_none_and_pop_drops_one_entry():
    cache: Lru[str, int] = Lru(3)
    assert cache.get("missing") is None
    cache.put("a", 1)
    cache.pop("a")
    cache.pop("never there")
    assert "a" not in cache and len(cache) == 0


def test_the_predictor_cache_size_is_a_setting():
    assert Settings().predictor_cache == 16  # issue 22.4: was 2 (tests/test_predictor_cache.py)
    assert Settings.from_env({"BATCHERY_PREDICTOR_CACHE": "5"}).predictor_cache == 5
