"""The job loop: paid service jobs, the second kind of desired row (ARCHITECTURE.md section 8).

:mod:`reconciler.jobs.handlers` is the handler side of the service registry (a service id maps to
the code that runs it), :mod:`reconciler.jobs.runner` the loop that claims pending jobs through the
one claim primitive (:mod:`reconciler.claims`), runs their handlers, and ends every job in the
ledger's one termination transaction, and :mod:`reconciler.jobs.builtin` the handlers of the
built-in services.
"""
