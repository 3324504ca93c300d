"""Every GraphQL document the Railway client sends, and the operation names it reports.

Each document is a module-level constant listed in :data:`ALL_DOCUMENTS`, so the tests validate
every one against the full public schema (``providers/simulated/specs/railway.schema.graphql``)
and a misspelt field or argument fails CI instead of production. The study of the original
system found exactly that bug: it passed an ``environmentId`` that ``deploymentRedeploy`` does
not take.
"""

from __future__ import annotations

OPERATIONS: tuple[str, ...] = (
    "project.environments",
    "project.services",
    "environment.serviceInstances",
    "environment.volumeInstances",
    "environment.config",
    "service",
    "serviceInstance",
    "serviceCreate",
    "serviceDelete",
    "volumeCreate",
    "volumeInstanceUpdate",
    "volumeDelete",
    "serviceDomainCreate",
    "serviceDomainDelete",
    "environmentPatchCommit",
    "serviceInstanceRedeploy",
)
"""Every operation name this module passes to ``ProviderHTTP.request`` (metric labels): the root
field of the document, or ``<root>.<connection>`` for the paged listings."""

PAGE_INFO = "pageInfo { hasNextPage endCursor }"

PROJECT_ENVIRONMENTS = f"""
query ProjectEnvironments($projectId: String!, $first: Int!, $after: String) {{
  project(id: $projectId) {{
    environments(first: $first, after: $after) {{
      edges {{ node {{ id name }} }}
      {PAGE_INFO}
    }}
  }}
}}"""

PROJECT_SERVICES = f"""
query ProjectServices($projectId: String!, $first: Int!, $after: String) {{
  project(id: $projectId) {{
    services(first: $first, after: $after) {{
      edges {{ node {{ id name projectId createdAt }} }}
      {PAGE_INFO}
    }}
  }}
}}"""

SERVICE = """
query Service($id: String!) {
  service(id: $id) { id name projectId createdAt }
}"""

SERVICE_CREATE = """
mutation ServiceCreate($input: ServiceCreateInput!) {
  serviceCreate(input: $input) { id name projectId createdAt }
}"""

SERVICE_DELETE = """
mutation ServiceDelete($id: String!, $environmentId: String) {
  serviceDelete(id: $id, environmentId: $environmentId)
}"""

SERVICE_INSTANCE = """
query ServiceInstance($serviceId: String!, $environmentId: String!) {
  serviceInstance(serviceId: $serviceId, environmentId: $environmentId) {
    id serviceId serviceName environmentId startCommand
    source { image }
    latestDeployment { id status createdAt }
    domains { serviceDomains { id domain } customDomains { id domain } }
  }
}"""

ENVIRONMENT_SERVICE_INSTANCES = f"""
query EnvironmentServiceInstances($environmentId: String!, $first: Int!, $after: String) {{
  environment(id: $environmentId) {{
    serviceInstances(first: $first, after: $after) {{
      edges {{
        node {{
          serviceId serviceName
          source {{ image }}
          latestDeployment {{ id status }}
          domains {{ serviceDomains {{ domain }} customDomains {{ domain }} }}
        }}
      }}
      {PAGE_INFO}
    }}
  }}
}}"""

# The whole environment's config (every service's source, deploy and variables) in one call:
# the batched read drift detection diffs against what we applied.
ENVIRONMENT_CONFIG = """
query EnvironmentConfig($environmentId: String!) {
  environment(id: $environmentId) { config(decryptVariables: true) }
}"""

ENVIRONMENT_VOLUME_INSTANCES = f"""
query EnvironmentVolumeInstances($environmentId: String!, $first: Int!, $after: String) {{
  environment(id: $environmentId) {{
    volumeInstances(first: $first, after: $after) {{
      edges {{ node {{ id volumeId serviceId mountPath volume {{ id name }} }} }}
      {PAGE_INFO}
    }}
  }}
}}"""

VOLUME_CREATE = """
mutation VolumeCreate($input: VolumeCreateInput!) {
  volumeCreate(input: $input) { id name projectId createdAt }
}"""

VOLUME_INSTANCE_UPDATE = """
mutation VolumeInstanceUpdate(
  $volumeId: String!, $environmentId: String, $input: VolumeInstanceUpdateInput!
) {
  volumeInstanceUpdate(volumeId: $volumeId, environmentId: $environmentId, input: $input)
}"""

VOLUME_DELETE = """
mutation VolumeDelete($volumeId: String!) {
  volumeDelete(volumeId: $volumeId)
}"""

SERVICE_DOMAIN_CREATE = """
mutation ServiceDomainCreate($input: ServiceDomainCreateInput!) {
  serviceDomainCreate(input: $input) { id domain serviceId environmentId }
}"""

SERVICE_DOMAIN_DELETE = """
mutation ServiceDomainDelete($id: String!) {
  serviceDomainDelete(id: $id)
}"""

ENVIRONMENT_PATCH_COMMIT = """
mutation EnvironmentPatchCommit($environmentId: String!, $patch: EnvironmentConfig, $commitMessage: String) {
  environmentPatchCommit(environmentId: $environmentId, patch: $patch, commitMessage: $commitMessage)
}"""

SERVICE_INSTANCE_REDEPLOY = """
mutation ServiceInstanceRedeploy($environmentId: String!, $serviceId: String!) {
  serviceInstanceRedeploy(environmentId: $environmentId, serviceId: $serviceId)
}"""

ALL_DOCUMENTS: tuple[str, ...] = (
    PROJECT_ENVIRONMENTS,
    PROJECT_SERVICES,
    SERVICE,
    SERVICE_CREATE,
    SERVICE_DELETE,
    SERVICE_INSTANCE,
    ENVIRONMENT_SERVICE_INSTANCES,
    ENVIRONMENT_VOLUME_INSTANCES,
    ENVIRONMENT_CONFIG,
    VOLUME_CREATE,
    VOLUME_INSTANCE_UPDATE,
    VOLUME_DELETE,
    SERVICE_DOMAIN_CREATE,
    SERVICE_DOMAIN_DELETE,
    ENVIRONMENT_PATCH_COMMIT,
    SERVICE_INSTANCE_REDEPLOY,
)
