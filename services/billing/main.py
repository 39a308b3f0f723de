"""Entry point of the billing service: `gateway run billing` calls `run_billing`."""

from services.billing.consumer import BillingConsumer, run_billing

__all__ = ["BillingConsumer", "run_billing"]
