"""Webhook delivery: the loop's side of the outbox that migration 0009 fills (ARCHITECTURE.md section 8).

* :mod:`.signing`: Standard Webhooks signatures and ``whsec_`` secrets.
* :mod:`.settings`: ``SERVICE_WEBHOOK_SECRET`` and the delivery settings.
* :mod:`.safety`: where a delivery may go (http(s) only, no private or metadata address).
* :mod:`.queries`: the statements, including the claim statements of the shared claim primitive.
* :mod:`.vocabulary`: what an attempt came to (the metrics' labels).
* :mod:`.delivery`: the sender the loop runs: claim due deliveries, sign, post, record, retry.
"""
