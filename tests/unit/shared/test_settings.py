"""Settings read from the environment: billing's batching knobs."""

from __future__ import annotations

from shared.settings import Settings


def test_billing_batches_default_to_500_events_and_a_100_ms_fill() -> None:
    settings = Settings.from_env({})
    assert (settings.billing_batch_size, settings.billing_fill_wait_ms) == (500, 100)


def test_billing_batches_are_configurable_and_kept_sane() -> None:
    settings = Settings.from_env({"BILLING_BATCH_SIZE": "50", "BILLING_FILL_WAIT_MS": "0"})
    assert (settings.billing_batch_size, settings.billing_fill_wait_ms) == (50, 0)
    nonsense = Settings.from_env({"BILLING_BATCH_SIZE": "0", "BILLING_FILL_WAIT_MS": "-5"})
    assert (nonsense.billing_batch_size, nonsense.billing_fill_wait_ms) == (1, 0)
