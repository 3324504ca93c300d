"""The typed Python SDK, generated from the service registry (``reconciler sdk generate``)."""
