"""Every public name is exported, and nothing else (as httpx checks its own)."""

import async_store


def test_all_is_sorted_and_complete() -> None:
    assert async_store.__all__ == sorted(async_store.__all__)
    public = {
        name
        for name, value in vars(async_store).items()
        if not name.startswith("_") and getattr(value, "__module__", "").startswith("async_store")
    }
    assert public == set(async_store.__all__)


def test_exported_members_say_they_are_ours() -> None:
    for name in async_store.__all__:
        assert getattr(async_store, name).__module__.startswith("async_store.")
