"""A router worker freezes what start-up left in the heap (tierstore.app.freeze_startup_heap), so a
full garbage collection during a request no longer walks the imports and the app (100-140 ms seen
inside one top-K)."""
from __future__ import annotations

import gc
from types import SimpleNamespace

import tierstore.app as app_module


class _App:
    pass


def test_wsgi_freezes_the_start_up_heap_after_the_warm_up(monkeypatch):
    order = []
    monkeypatch.setattr(app_module, "load_settings", lambda: SimpleNamespace(warmup_ms=0))
    monkeypatch.setattr("tierstore.logs.configure_from_settings", lambda settings: None)
    monkeypatch.setattr(app_module, "build_app", lambda settings: order.append("build") or _App())
    monkeypatch.setattr("router.warmup.warm_up", lambda app, ms: order.append(("warm_up", gc.get_freeze_count())))
    gc.unfreeze()
    try:
        app = app_module.wsgi()
        assert order == ["build", ("warm_up", 0)]  # nothing frozen before the warm-up ran
        assert gc.get_freeze_count() > 1000
        assert not any(o is app for o in gc.get_objects())  # the app is in the permanent generation
        garbage = [[]]
        garbage[0].append(garbage)  # a cycle made after the freeze is still collected
        del garbage
        assert gc.collect() > 0
    finally:
        gc.unfreeze()


def test_freeze_frees_garbage_rather_than_freezing_it():
    import weakref
    gc.unfreeze()
    try:
        node = _App()
        node.self = node  # an unreachable cycle once `node` is dropped: only a collection frees it
        gone = weakref.ref(node)
        del node
        n = app_module.freeze_startup_heap()
        assert n == gc.get_freeze_count() > 0
        assert gone() is None  # frozen, it would live for the whole process
    finally:
        gc.unfreeze()
