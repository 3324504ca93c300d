"""Railway: a hand-written GraphQL client and the four drivers built on it.

Railway publishes no Python SDK, only a GraphQL endpoint (``POST <base>/graphql/v2`` with
``{query, variables}``). The package is split by concern:

* :mod:`providers.railway.documents`: every GraphQL document sent, each validated against the
  full public schema by the tests, and the operation names reported to metrics;
* :mod:`providers.railway.client`: configuration, authentication, Railway's error texts mapped
  onto the error hierarchy, Relay paging and the batch reads;
* :mod:`providers.railway.drivers`: the service, volume, domain and deployment drivers.

The names other code uses are re-exported here, so ``from providers.railway import ...`` is the
one way in.
"""

from __future__ import annotations

from providers.railway.client import (
    BEARER_KIND,
    NO_DEPLOYMENT,
    PAGE_SIZE,
    PROJECT_KIND,
    PROVIDER,
    THROTTLE_SECONDS,
    RailwayClient,
    RailwayConfig,
    graphql_error,
    railway_auth_headers,
)
from providers.railway.documents import ALL_DOCUMENTS, OPERATIONS
from providers.railway.drivers import (
    RailwayDeploymentDriver,
    RailwayDomainDriver,
    RailwayServiceDriver,
    RailwayVolumeDriver,
)

__all__ = [
    "ALL_DOCUMENTS",
    "BEARER_KIND",
    "NO_DEPLOYMENT",
    "OPERATIONS",
    "PAGE_SIZE",
    "PROJECT_KIND",
    "PROVIDER",
    "THROTTLE_SECONDS",
    "RailwayClient",
    "RailwayConfig",
    "RailwayDeploymentDriver",
    "RailwayDomainDriver",
    "RailwayServiceDriver",
    "RailwayVolumeDriver",
    "graphql_error",
    "railway_auth_headers",
]
