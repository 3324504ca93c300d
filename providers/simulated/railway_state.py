"""The simulated Railway's world: one project's records, their indexes, and the rules that keep them.

The world: one project (id from the seed unless given) with two environments, ``production``
and ``staging``. Services get an instance in every environment (as ``serviceCreate`` documents
for non-fork environments). Volumes have volume instances per environment. Service domains are
``<service>-<random>.up.railway.app``. A deployment's status is computed from the clock when it
is read (QUEUED -> BUILDING -> DEPLOYING -> SUCCESS over ``deploy_seconds``), so no background
task is needed; :meth:`RailwayWorld.crash` makes one CRASHED.

:class:`RailwayWorld` holds the tables and indexes and the operations several resolvers share
(look-ups that raise Railway's "not found", starting a deployment, Relay paging, list lag);
the resolvers themselves are in :mod:`providers.simulated.railway` and the schema-shaped views
in :mod:`providers.simulated.railway_views`. Nothing here locks: the fake holds its lock around
every request.
"""

from __future__ import annotations

import base64
import time
import uuid
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

from providers.simulated._common import FakeRandom, iso_timestamp
from providers.simulated.fault_layer import Faults
from providers.simulated.railway_schema import RailwayAPIError, bad_input, not_found

ENVIRONMENT_NAMES = ("production", "staging")
DOMAIN_SUFFIX = "up.railway.app"
REGION = "us-west2"
VOLUME_SIZE_MB = 5000
HIDDEN = "<hidden>"
"""What :meth:`RailwayWorld.snapshot` shows instead of a variable's value when asked to hide them."""

# Share of deploy_seconds spent in each phase before SUCCESS.
_PHASES = (("QUEUED", 0.15), ("BUILDING", 0.70), ("DEPLOYING", 1.0))
STOPPED = frozenset({"CRASHED", "FAILED", "REMOVED", "SKIPPED"})


@dataclass
class Record:
    id: str
    seq: int
    created_at: str


@dataclass
class Environment(Record):
    name: str


@dataclass
class Service(Record):
    name: str
    home_environment_id: str


@dataclass
class Instance(Record):
    """One service in one environment, with the deploy config patches have given it."""

    service_id: str
    environment_id: str
    updated_at: str
    image: str | None = None
    start_command: str | None = None
    cpu: float | None = None
    memory_bytes: int | None = None
    variables: dict[str, str] = field(default_factory=dict)

    def config(self) -> tuple[Any, ...]:
        return (self.image, self.start_command, self.cpu, self.memory_bytes, sorted(self.variables.items()))


@dataclass
class Volume(Record):
    name: str


@dataclass
class VolumeInstance(Record):
    volume_id: str
    service_id: str | None
    environment_id: str
    mount_path: str


@dataclass
class Domain(Record):
    service_id: str
    environment_id: str
    domain: str
    target_port: int | None


@dataclass
class Deployment(Record):
    service_id: str
    environment_id: str
    started: float
    image: str | None
    start_command: str | None
    outcome: str | None = None
    """A status that overrides the clock: CRASHED (see ``crash``) or REMOVED (superseded)."""

    def status(self, now: float, deploy_seconds: float) -> str:
        if self.outcome is not None:
            return self.outcome
        elapsed = now - self.started
        if deploy_seconds <= 0 or elapsed >= deploy_seconds:
            return "SUCCESS"
        share = elapsed / deploy_seconds
        return next(name for name, end in _PHASES if share < end)


R = TypeVar("R", bound=Record)
D = TypeVar("D", Domain, Deployment)
View = dict[str, Any]


class PerInstance(Generic[D]):
    """Domains or deployments grouped by service instance, kept beside their table.

    A listing page shows each service instance's latest deployment and its domains; finding them
    by scanning the whole table made a page cost O(fleet) and one listing O(fleet^2), seconds of
    the fake's one event loop per page at 10,000 services, stalling every other call.
    """

    def __init__(self) -> None:
        self._groups: dict[tuple[str, str], dict[str, D]] = {}

    def add(self, record: D) -> None:
        self._groups.setdefault((record.service_id, record.environment_id), {})[record.id] = record

    def remove(self, record: D) -> None:
        group = self._groups.get((record.service_id, record.environment_id), {})
        group.pop(record.id, None)
        if not group:
            self._groups.pop((record.service_id, record.environment_id), None)

    def of(self, service_id: str, environment_id: str) -> list[D]:
        return list(self._groups.get((service_id, environment_id), {}).values())

    def clear(self) -> None:
        self._groups.clear()


class RailwayWorld:
    """One project's environments, services, instances, volumes, domains and deployments."""

    def __init__(
        self,
        faults: Faults,
        *,
        deploy_seconds: float,
        seed: int | None,
        page_size: int,
        project_id: str | None,
        project_name: str,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if page_size < 1:
            raise ValueError("page_size must be at least 1")
        self.faults = faults
        self.deploy_seconds = deploy_seconds
        self.page_size = page_size
        self.clock = clock
        self.random = FakeRandom(seed)
        self._seq = 0
        self.project_id = project_id or self.random.uuid()
        self.project_name = project_name
        self.project_created_at = iso_timestamp()
        # Derived, not drawn: the seeded ids of everything else stay what they were.
        self.user_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"simulated-railway/user/{self.project_id}"))
        self.project_token_id = str(uuid.uuid5(uuid.NAMESPACE_URL, f"simulated-railway/token/{self.project_id}"))
        self.environments = {
            env.id: env
            for env in (
                Environment(self.random.uuid(), self.next_seq(), iso_timestamp(), name) for name in ENVIRONMENT_NAMES
            )
        }
        self.services: dict[str, Service] = {}
        self.instances: dict[tuple[str, str], Instance] = {}
        self.volumes: dict[str, Volume] = {}
        self.volume_instances: dict[str, VolumeInstance] = {}
        self.domains: dict[str, Domain] = {}
        self.deployments: dict[str, Deployment] = {}
        self.domains_of: PerInstance[Domain] = PerInstance()
        self.deployments_of: PerInstance[Deployment] = PerInstance()

    def clear(self) -> None:
        """Forget every service, volume, domain and deployment (the project and environments stay)."""
        for table in (self.services, self.instances, self.volumes, self.volume_instances, self.domains):
            table.clear()
        self.deployments.clear()
        self.domains_of.clear()
        self.deployments_of.clear()

    # --- ids --------------------------------------------------------------------------------------

    def next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def new_id(self) -> tuple[str, int, str]:
        """``(id, seq, created_at)`` for a new record."""
        return self.random.uuid(), self.next_seq(), iso_timestamp()

    # --- look-ups that fail as Railway does -------------------------------------------------------

    @property
    def environment_ids(self) -> dict[str, str]:
        """``{"production": <id>, "staging": <id>}``."""
        return {env.name: env.id for env in self.environments.values()}

    def environment(self, environment_id: Any) -> Environment:
        env = self.environments.get(environment_id)
        if env is None:
            raise not_found("Environment")
        return env

    def production(self) -> Environment:
        return next(e for e in self.environments.values() if e.name == "production")

    def service(self, service_id: Any) -> Service:
        service = self.services.get(service_id)
        if service is None:
            raise not_found("Service")
        return service

    def instance(self, service_id: Any, environment_id: Any) -> Instance:
        instance = self.instances.get((service_id, environment_id))
        if instance is None:
            raise not_found("ServiceInstance")
        return instance

    def deployment(self, deployment_id: Any) -> Deployment:
        deployment = self.deployments.get(deployment_id)
        if deployment is None:
            raise not_found("Deployment")
        return deployment

    def check_no_volume(self, service_id: str, environment_id: str) -> None:
        for vi in self.volume_instances.values():
            if (vi.service_id, vi.environment_id) == (service_id, environment_id):
                raise RailwayAPIError("Service already has a volume mounted in this environment", "CONFLICT")

    # --- changes several resolvers make -----------------------------------------------------------

    def deploy(self, instance: Instance, now: float) -> Deployment:
        """Start a deployment of the instance's current config; older ones are superseded."""
        if instance.image is None:
            raise bad_input("Service instance has no source to deploy")
        for older in self.deployments_of.of(instance.service_id, instance.environment_id):
            older.outcome = older.outcome or "REMOVED"
        deployment = Deployment(
            *self.new_id(),
            service_id=instance.service_id,
            environment_id=instance.environment_id,
            started=now,
            image=instance.image,
            start_command=instance.start_command,
        )
        self.deployments[deployment.id] = deployment
        self.deployments_of.add(deployment)
        return deployment

    def latest_deployment(self, instance: Instance) -> Deployment | None:
        mine = self.deployments_of.of(instance.service_id, instance.environment_id)
        return max(mine, key=lambda d: d.seq) if mine else None

    def crash(self, service_id: str, environment_id: str | None = None) -> str:
        """Make the latest deployment of the service (in ``environment_id`` if given) CRASHED.

        Returns the deployment id; raises ``KeyError`` if the service never deployed.
        """
        candidates = [
            d
            for d in self.deployments.values()
            if d.service_id == service_id and environment_id in (None, d.environment_id)
        ]
        if not candidates:
            raise KeyError(f"service {service_id} has no deployment")
        latest = max(candidates, key=lambda d: d.seq)
        latest.outcome = "CRASHED"
        return latest.id

    def drop_service(self, service: Service) -> None:
        """Remove a service with its instances, domains, deployments and volume instances."""
        del self.services[service.id]
        for key in [k for k in self.instances if k[0] == service.id]:
            del self.instances[key]
        for domain in [d for d in self.domains.values() if d.service_id == service.id]:
            del self.domains[domain.id]
            self.domains_of.remove(domain)
        for deployment in [d for d in self.deployments.values() if d.service_id == service.id]:
            del self.deployments[deployment.id]
            self.deployments_of.remove(deployment)
        self.drop_volume_instances(vi for vi in self.volume_instances.values() if vi.service_id == service.id)

    def drop_volume_instances(self, doomed: Iterable[VolumeInstance]) -> None:
        """Remove volume instances, and each volume left with none."""
        for volume_instance in list(doomed):
            del self.volume_instances[volume_instance.id]
        remaining = {vi.volume_id for vi in self.volume_instances.values()}
        for volume_id in [v for v in self.volumes if v not in remaining]:
            del self.volumes[volume_id]

    # --- listings ---------------------------------------------------------------------------------

    def listed(self, record: Record) -> bool:
        """Whether listings show ``record``: neither it nor the service or volume it belongs to is
        hidden by list lag."""
        refs = (record.id, getattr(record, "service_id", None), getattr(record, "volume_id", None))
        return all(self.faults.is_listed(ref) for ref in refs if ref)

    def page(
        self,
        records: Iterable[R],
        args: Mapping[str, Any],
        view: Callable[[R], View],
        *,
        newest_first: bool = False,
    ) -> View:
        """A Relay connection over ``records``: opaque cursors, ``first`` capped at the page size.
        Records still hidden by list lag are left out."""
        ordered = sorted((r for r in records if self.listed(r)), key=lambda r: r.seq, reverse=newest_first)
        after, before = _cursor_seq(args.get("after")), _cursor_seq(args.get("before"))

        def follows(seq: int, cursor: int) -> bool:
            return seq < cursor if newest_first else seq > cursor

        # Cursors hold a position, not an index, so a deletion between pages skips nothing.
        if after is not None:
            ordered = [r for r in ordered if follows(r.seq, after)]
        if before is not None:
            ordered = [r for r in ordered if follows(before, r.seq)]
        first, last = args.get("first"), args.get("last")
        for name, value in (("first", first), ("last", last)):
            if value is not None and value < 0:
                raise bad_input(f"'{name}' must not be negative")
        has_next = has_previous = False
        if last is not None and first is None:
            count = min(last, self.page_size)
            has_previous = len(ordered) > count
            ordered = ordered[len(ordered) - count :] if count else []
        else:
            count = min(first if first is not None else self.page_size, self.page_size)
            has_next = len(ordered) > count
            ordered = ordered[:count]
        edges = [{"cursor": _cursor(r.seq), "node": view(r)} for r in ordered]
        return {
            "edges": edges,
            "pageInfo": {
                "hasNextPage": has_next,
                "hasPreviousPage": has_previous or after is not None,
                "startCursor": edges[0]["cursor"] if edges else None,
                "endCursor": edges[-1]["cursor"] if edges else None,
            },
        }

    # --- snapshot ---------------------------------------------------------------------------------

    def snapshot(self, *, reveal_secrets: bool = True) -> dict[str, list[dict[str, Any]]]:
        """Every service, volume, domain and deployment; variable values shown as :data:`HIDDEN`
        unless ``reveal_secrets`` (they hold the instances' keys)."""
        now = self.clock()
        return {
            "services": [self._service_snapshot(s, now, reveal_secrets) for s in self.services.values()],
            "volumes": [self._volume_snapshot(v) for v in self.volumes.values()],
            "domains": [
                {
                    "id": d.id,
                    "name": self.services[d.service_id].name,
                    "service_id": d.service_id,
                    "environment_id": d.environment_id,
                    "domain": d.domain,
                    "created_at": d.created_at,
                }
                for d in self.domains.values()
            ],
            "deployments": [
                {
                    "id": d.id,
                    "name": self.services[d.service_id].name,
                    "service_id": d.service_id,
                    "environment_id": d.environment_id,
                    "status": d.status(now, self.deploy_seconds),
                    "image": d.image,
                    "created_at": d.created_at,
                }
                for d in self.deployments.values()
            ],
        }

    def _service_snapshot(self, service: Service, now: float, reveal_secrets: bool) -> dict[str, Any]:
        instances = [i for i in self.instances.values() if i.service_id == service.id]

        def describe(instance: Instance) -> dict[str, Any]:
            latest = self.latest_deployment(instance)
            variables = instance.variables if reveal_secrets else dict.fromkeys(instance.variables, HIDDEN)
            return {
                "environment_id": instance.environment_id,
                "environment": self.environments[instance.environment_id].name,
                "image": instance.image,
                "start_command": instance.start_command,
                "cpu": instance.cpu,
                "memory_bytes": instance.memory_bytes,
                "variables": dict(variables),
                "deploy_status": latest.status(now, self.deploy_seconds) if latest else None,
            }

        home = self.instances[(service.id, service.home_environment_id)]
        return {
            "id": service.id,
            "name": service.name,
            "created_at": service.created_at,
            **describe(home),
            "instances": [describe(i) for i in instances],
        }

    def _volume_snapshot(self, volume: Volume) -> dict[str, Any]:
        instances = sorted(
            (vi for vi in self.volume_instances.values() if vi.volume_id == volume.id), key=lambda vi: vi.seq
        )
        attached = next((vi for vi in instances if vi.service_id in self.services), None)
        return {
            "id": volume.id,
            "name": self.services[attached.service_id].name if attached and attached.service_id else volume.name,
            "volume_name": volume.name,
            "service_id": attached.service_id if attached else None,
            "mount_path": attached.mount_path if attached else None,
            "environment_ids": [vi.environment_id for vi in instances],
            "created_at": volume.created_at,
        }


def _cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"cursor:{seq}".encode()).decode()


def _cursor_seq(cursor: Any) -> int | None:
    if cursor is None:
        return None
    try:
        prefix, _, seq = base64.urlsafe_b64decode(str(cursor).encode()).decode().partition(":")
        if prefix == "cursor":
            return int(seq)
    except ValueError:
        pass
    raise bad_input("Invalid cursor")
