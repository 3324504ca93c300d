"""Paid service jobs, the callers' side: the registry of typed services, callers and their API
keys, the escrow ledger, admission (``intake``), the one termination transaction, and the job
read model (ARCHITECTURE.md section 8, issue 12). The handlers that run jobs are the
reconciler's; the two meet in Postgres (migration 0006)."""
