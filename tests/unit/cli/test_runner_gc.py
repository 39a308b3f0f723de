"""Services start with the collector tuned: start-up objects frozen, rarer young passes."""

from __future__ import annotations

import gc

from services import runner


def test_settle_heap_freezes_startup_objects_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        runner._settle_heap()
        assert gc.get_freeze_count() > 10_000  # this interpreter's modules and classes
        assert gc.get_threshold()[0] == runner.GC_YOUNG_THRESHOLD > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
