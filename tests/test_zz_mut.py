import pytest
from leadflow.segments import processing, membership
from tests.test_segment_membership import test_incremental_membership_equals_full_recomputation as prop

@pytest.mark.parametrize("mutation", ["never_relevant", "no_merge", "no_timer_full"])
def test_mut(db, monkeypatch, mutation):
    if mutation == "never_relevant":
        monkeypatch.setattr(processing, "segment_relevant", lambda s, n: "Pro" == s.name)
    elif mutation == "no_merge":
        monkeypatch.setattr(processing, "merged_take", lambda: set())
        monkeypatch.setattr(processing, "skippable", lambda f: True)
    else:
        from leadflow.segments import timers
        monkeypatch.setattr(timers, "segment_time_sensitive", lambda s: False)
        monkeypatch.setattr(timers, "_reconcile_due", lambda now: False)
    prop(db=None)
