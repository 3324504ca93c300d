"""Every operation name each fake gives its requests: what fault rules and flags may name.

It imports the fakes, so it sits above them: the fault plan (:mod:`fault_plan`) and the fault
layer (:mod:`fault_layer`) never import it, and the fakes import only those two. Flags
(:mod:`fault_flags`) and the simulator app (:mod:`app`) check plans against it.
"""

from __future__ import annotations

from providers.simulated import agentmail, openrouter, railway, telnyx, upstream
from providers.simulated.fault_plan import UNKNOWN


def known_operations() -> dict[str, frozenset[str]]:
    """Every operation name each fake gives its requests (Railway: every root field of its schema)."""
    named = {
        "railway": railway.operations(),
        "openrouter": frozenset(openrouter.OPERATIONS),
        "agentmail": frozenset(agentmail.OPERATIONS),
        "telnyx": frozenset(telnyx.OPERATIONS),
        "upstream": frozenset(upstream.OPERATIONS),
    }
    return {provider: names | {UNKNOWN} for provider, names in named.items()}
