"""``reconciler``: the operator's command line. Wiring only: settings in, components out.

Every command resolves its database the same way (``SERVICE_DATABASE_URL``, else an embedded
Postgres under ``.reconciler/``), and every expected failure (a bad setting, a bad file, an
unreachable database) ends with one line on stderr and a non-zero exit code, never a traceback:
exit 2 for bad input, 1 for everything else.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import sys
import warnings
from collections.abc import Awaitable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn, TypeVar

import psycopg
import typer
import yaml
from rich.console import Console

from desired_state import store
from desired_state.models import INSTANCE_ID_PATTERN, SpecError, parse_instances
from reconciler import status as status_views
from reconciler.cli import paid as paid_cli
from reconciler.cli.jobs import jobs_app
from reconciler.db import DatabaseError, EmbeddedPostgres, load_migrations, migrate
from reconciler.engine import EngineSettings, Outcome
from reconciler.legacy import upgrade
from reconciler.logs import configure_logging
from reconciler.runtime import Runtime, RuntimeOptions
from reconciler.settings import Settings, SettingsError, load_settings

app = typer.Typer(
    help="Provisioning reconciler: converges desired agent instances onto Railway, OpenRouter, AgentMail and Telnyx.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
app.add_typer(paid_cli.callers_app, name="callers")
app.add_typer(paid_cli.credits_app, name="credits")
app.add_typer(paid_cli.courses_app, name="courses")
app.add_typer(paid_cli.services_app, name="services")
app.add_typer(paid_cli.ledger_app, name="ledger")
app.add_typer(jobs_app, name="jobs")
console = Console()
err_console = Console(stderr=True, soft_wrap=True)
T = TypeVar("T")

EXIT_BAD_INPUT = 2
EXIT_FAILURE = 1


class CommandError(Exception):
    """An expected failure: printed as one line, exit code attached."""

    def __init__(self, message: str, code: int = EXIT_FAILURE) -> None:
        super().__init__(message)
        self.code = code


def fail(message: str, code: int = EXIT_FAILURE) -> NoReturn:
    raise CommandError(message, code)


def settings_or_exit() -> Settings:
    try:
        return load_settings()
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


@contextmanager
def database(settings: Settings) -> Iterator[str]:
    """The database URL, starting the embedded server when none is configured.

    The embedded database is migrated automatically (it is ours alone); a configured one must be
    migrated explicitly with ``reconciler migrate``, so several replicas never race a schema change
    they were not told about.
    """
    if settings.database_url:
        yield settings.database_url
        return
    with EmbeddedPostgres() as url:
        migrate(url)
        yield url


def require_current_schema(url: str) -> None:
    latest = max((m.version for m in load_migrations()), default=0)
    try:
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT max(version) FROM schema_migrations").fetchone()
    except psycopg.errors.UndefinedTable:
        fail("the database has no schema yet: run `reconciler migrate` first")
    except psycopg.OperationalError as exc:
        fail(f"cannot connect to Postgres: {str(exc).strip().splitlines()[0]}")
    if row is None or (row[0] or 0) < latest:
        fail("the database schema is behind this version: run `reconciler migrate` first")


def run_async(coro: Awaitable[T]) -> T:
    async def runner() -> T:
        return await coro

    return asyncio.run(runner())


async def _connect(url: str) -> psycopg.AsyncConnection[Any]:
    try:
        return await psycopg.AsyncConnection.connect(url, autocommit=True)
    except psycopg.OperationalError as exc:
        fail(f"cannot connect to Postgres: {str(exc).strip().splitlines()[0]}")


@app.command("migrate")
def migrate_command(
    drop: Annotated[
        bool,
        typer.Option(
            "--drop",
            help="Also drop the legacy columns of the system this replaces: instance_infra's gateway_token, "
            "setup_password and wallet_key; with POOL_DATABASE_URL, the pool's infrastructure columns.",
        ),
    ] = False,
) -> None:
    """Apply pending database migrations (safe to run twice, and from several replicas at once).

    Then, for a database upgraded in place, fill instance_infra.provider_project_id from
    RAILWAY_PROJECT_ID and, with POOL_DATABASE_URL set, backfill instance_infra from the pool's
    instances table (only while instance_infra is empty).
    """
    settings = settings_or_exit()
    with database(settings) as url:
        applied = migrate(url)
        report = upgrade(
            url,
            settings.pool_database_url,
            project_id=settings.railway_project_id,
            environment_id=settings.railway_environment_id,
            drop=drop,
        )
    console.print(f"applied {', '.join(applied)}" if applied else "schema is up to date")
    for line in report.lines():
        console.print(line)
    if report.problems:
        raise typer.Exit(1)


@app.command("apply")
def apply_command(
    file: Annotated[Path, typer.Argument(help="JSON or YAML list of instances (instanceId, name, tools, env).")],
) -> None:
    """Write desired instances from a file, like `kubectl apply`: all of them or none."""
    specs = _read_specs(file)
    settings = settings_or_exit()
    with database(settings) as url:
        require_current_schema(url)

        async def write() -> list[store.PutResult]:
            async with await _connect(url) as conn:
                return await store.put_many(conn, specs)

        results = run_async(write())
    for result in results:
        console.print(f"{result.instance_id}: {result.outcome.value}")


def _read_specs(file: Path) -> list[Any]:
    try:
        text = file.read_text()
    except OSError as exc:
        fail(f"{file}: cannot read ({exc.strerror})", EXIT_BAD_INPUT)
    try:
        data = json.loads(text) if file.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as exc:
        first = str(exc).splitlines()[0]
        fail(f"{file}: not valid {'JSON' if file.suffix == '.json' else 'YAML'}: {first}", EXIT_BAD_INPUT)
    try:
        return parse_instances(data)
    except SpecError as exc:
        fail(f"{file}: " + "; ".join(exc.problems), EXIT_BAD_INPUT)


@app.command("delete")
def delete_command(
    instance_ids: Annotated[list[str], typer.Argument(help="Instance ids to tear down.")],
) -> None:
    """Mark instances absent: the reconciler deletes their resources, then the rows."""
    bad = [i for i in instance_ids if not INSTANCE_ID_PATTERN.fullmatch(i)]
    if bad:
        fail(f"not an instance id: {bad[0]!r} (1-32 characters of A-Z, a-z, 0-9, '_' or '-')", EXIT_BAD_INPUT)
    settings = settings_or_exit()
    with database(settings) as url:
        require_current_schema(url)

        async def mark() -> list[str]:
            async with await _connect(url) as conn, conn.transaction():
                # One the replaced system made (only instance_infra knows it) is imported for teardown.
                await store.adopt_for_teardown(conn, instance_ids, settings.name_prefix)
                return await store.mark_absent(conn, instance_ids)

        found = run_async(mark())
    for instance_id in instance_ids:
        console.print(f"{instance_id}: {'marked for deletion' if instance_id in found else 'not found'}")
    if len(found) < len(instance_ids):
        raise typer.Exit(EXIT_FAILURE)


@app.command("reconcile")
def reconcile_command(
    instance: Annotated[list[str] | None, typer.Option("--instance", "-i", help="Instance id (repeatable).")] = None,
    all_: Annotated[bool, typer.Option("--all", help="Every instance.")] = False,
) -> None:
    """Force a reconcile pass now and print what it did."""
    if bool(instance) == all_:
        fail("give --instance ID (one or more) or --all", EXIT_BAD_INPUT)
    settings = settings_or_exit()
    _require_railway(settings)
    with database(settings) as url:
        require_current_schema(url)

        async def force() -> list[Outcome]:
            async with Runtime(settings, url) as runtime:
                made_due = await runtime.reconciler.make_due(None if all_ else instance)
                missing = set(instance or []) - set(made_due)
                if missing:
                    fail(f"not found: {', '.join(sorted(missing))}")
                return await runtime.worker.drain()

        outcomes = run_async(force())
    if not outcomes:
        console.print("nothing to do (rows are leased by a running worker, or there are none)")
    for outcome in outcomes:
        done = ", ".join(f"{a.verb.symbol.strip() or '·'} {a.kind.value}" for a in outcome.actions) or "no changes"
        line = f"{outcome.instance_id}: {outcome.result} ({done})"
        if outcome.error:
            line += f"; error: {outcome.error}"
        console.print(line)


def _require_railway(settings: Settings) -> None:
    try:
        settings.require_railway()
    except SettingsError as exc:
        fail(str(exc), EXIT_BAD_INPUT)


@app.command("status")
def status_command(
    instance_id: Annotated[str | None, typer.Argument(help="One instance (default: all).")] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Machine-readable output.")] = False,
) -> None:
    """Show instances and their resources, from our tables only (no provider calls)."""
    settings = settings_or_exit()
    with database(settings) as url:
        require_current_schema(url)

        async def read() -> list[status_views.InstanceStatus]:
            async with await _connect(url) as conn:
                return await status_views.instance_statuses(conn, [instance_id] if instance_id else None)

        rows = run_async(read())
    if instance_id and not rows:
        fail(f"instance {instance_id} not found")
    if as_json:
        sys.stdout.write(json.dumps([row.to_json() for row in rows], indent=2) + "\n")
        return
    console.print(status_views.status_table(rows))


@app.command("plan")
def plan_command(
    instance: Annotated[list[str] | None, typer.Option("--instance", "-i", help="Instance id (repeatable).")] = None,
    detailed_exitcode: Annotated[
        bool, typer.Option("--detailed-exitcode", help="Exit 0: no changes, 1: error, 2: changes present.")
    ] = False,
) -> None:
    """Show what the reconciler would do, from a fresh read of every provider (changes nothing)."""
    from reconciler.operator import build_plan, render_plan

    settings = settings_or_exit()
    _require_railway(settings)
    with database(settings) as url:
        require_current_schema(url)

        async def compute() -> Any:
            async with Runtime(settings, url) as runtime, await _connect(url) as conn:
                return await build_plan(conn, runtime.observer, runtime.reconciler.defaults, instance or None)

        plan = run_async(compute())
    for line in render_plan(plan):
        console.print(line, highlight=False, markup=False)
    if detailed_exitcode and plan.has_changes:
        raise typer.Exit(2)


@app.command("why")
def why_command(
    instance_id: Annotated[str, typer.Argument(help="The instance to explain.")],
    events: Annotated[int, typer.Option(help="How many recent events to show.", min=1, max=500)] = 10,
) -> None:
    """Explain an instance's state: conditions, last error, attempts, next attempt, recent events."""
    from reconciler.operator import why

    settings = settings_or_exit()
    with database(settings) as url:
        require_current_schema(url)

        async def explain() -> list[str] | None:
            async with await _connect(url) as conn:
                return await why(conn, instance_id, events)

        lines = run_async(explain())
    if lines is None:
        fail(f"instance {instance_id} not found")
    for line in lines:
        console.print(line, highlight=False, markup=False)


@app.command("gc")
def gc_command(
    dry_run: Annotated[bool, typer.Option("--dry-run", help="List orphans; delete nothing.")] = False,
    grace: Annotated[
        float | None, typer.Option(help="Seconds an orphan must have been seen before deletion (default 600).")
    ] = None,
) -> None:
    """Delete provider resources whose derived name maps to no live desired instance."""
    settings = settings_or_exit()
    _require_railway(settings)
    with database(settings) as url:
        require_current_schema(url)

        async def collect() -> Any:
            async with Runtime(settings, url) as runtime:
                if grace is not None:
                    runtime.observer.gc_grace = grace
                return await runtime.observer.collect(dry_run=dry_run)

        report = run_async(collect())
    if not report.orphans:
        console.print("no orphans")
    for orphan in report.orphans:
        if dry_run:
            state = "would delete once past the grace period"
        elif orphan in report.collected:
            state = "deleted"
        else:
            state = f"seen for {orphan.seen_for_seconds:.0f}s, waiting for the grace period"
        console.print(f"{orphan.kind.value} {orphan.external_id} ({orphan.name}: {orphan.why}): {state}")


@app.command("run")
def run_command(
    metrics_port: Annotated[int, typer.Option(help="Serve /metrics on this port; 0 disables.")] = 9464,
    api: Annotated[bool, typer.Option("--api/--no-api", help="Serve the HTTP API on PORT (default 3002).")] = True,
    loop: Annotated[bool, typer.Option("--loop/--no-loop", help="Run the reconcile loop.")] = True,
    host: Annotated[str, typer.Option(help="Address the HTTP API binds.")] = "0.0.0.0",  # noqa: S104 (a server)
    tick: Annotated[float, typer.Option(help="Seconds between scheduled passes.")] = 1.0,
    poll_interval: Annotated[float, typer.Option(help="Seconds between passes over a converged instance.")] = 300.0,
    lease_seconds: Annotated[
        float,
        typer.Option(
            help="Seconds a claim stays exclusive without a renewal (the worker renews its claims every third of "
            "this while it works); a killed replica's rows are taken over within this long."
        ),
    ] = 10.0,
    observe_seconds: Annotated[float, typer.Option(help="Seconds between batched provider listings.")] = 30.0,
    wait_timeout: Annotated[
        float, typer.Option(help="Longest an HTTP write waits for convergence before answering 202.")
    ] = 120.0,
) -> None:
    """Run the reconcile loop and the HTTP API (either alone with --no-api / --no-loop) until SIGTERM."""
    from desired_state.api import ApiConfig, ApiConfigError, ApiStartError, create_app
    from desired_state.api import serve as serve_api

    if not (api or loop):
        fail("nothing to run: --no-api and --no-loop together", EXIT_BAD_INPUT)
    settings = settings_or_exit()
    if loop:
        _require_railway(settings)
    if api:
        try:
            api_key = settings.require_api_key().reveal()
        except SettingsError as exc:
            fail(f"{exc} (or run with --no-api)", EXIT_BAD_INPUT)
    with database(settings) as url:
        require_current_schema(url)
        if metrics_port:
            from prometheus_client import start_http_server

            try:
                start_http_server(metrics_port)
            except OSError as exc:
                fail(f"cannot serve metrics on port {metrics_port}: {exc.strerror}")
        options = RuntimeOptions(
            engine=EngineSettings(poll_interval=poll_interval, lease_seconds=lease_seconds),
            tick_seconds=tick,
            observe_seconds=observe_seconds,
        )
        runtime = Runtime(settings, url, options)
        http_app = None
        if api:
            from desired_state.http_paid import PaidApiConfig, PaidRoutes

            paid = PaidRoutes(
                PaidApiConfig(
                    registry=runtime.services,
                    proxy_call=runtime.handlers.call_proxy,
                    on_admission=runtime.metrics.count_admission,
                )
            )
            configured = {"openrouter": settings.openrouter_key, "agentmail": settings.agentmail_key}
            configured["telnyx"] = settings.telnyx_key
            try:
                http_app = create_app(
                    ApiConfig(
                        api_key=api_key,
                        database_url=url,
                        project_id=settings.railway_project_id,
                        environment_id=settings.railway_environment_id,
                        name_prefix=settings.name_prefix,
                        wait_timeout=wait_timeout,
                        tools_enabled=frozenset(tool for tool, key in configured.items() if key),
                    ),
                    paid=paid,
                )
            except ApiConfigError as exc:
                fail(str(exc), EXIT_BAD_INPUT)

        async def serve() -> None:
            stop = asyncio.Event()
            event_loop = asyncio.get_running_loop()
            for sig in (signal.SIGTERM, signal.SIGINT):
                event_loop.add_signal_handler(sig, stop.set)
            log = logging.getLogger("reconciler")
            async with runtime:
                await runtime.publish_services()
                tasks = []
                if loop:
                    tasks.append(runtime.worker.run_forever(stop))
                    tasks.append(runtime.jobs.run_forever(stop))
                if http_app is not None:
                    tasks.append(serve_api(http_app, host, settings.port, stop))
                log.info(
                    "reconciler running",
                    extra={"metrics_port": metrics_port, "api_port": settings.port if api else None, "loop": loop},
                )
                try:
                    await asyncio.gather(*tasks)
                except ApiStartError as exc:
                    stop.set()
                    fail(str(exc))
            log.info("reconciler stopped")

        run_async(serve())


@app.command("simulate")
def simulate_command(
    port: Annotated[int, typer.Option(help="Loopback port to serve the four simulated providers on.")] = 8090,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    deploy_seconds: Annotated[float, typer.Option(help="How long a simulated Railway deploy takes.")] = 3.0,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible ids and fault decisions.")] = None,
    provider: Annotated[
        str, typer.Option(help="Provider the fault flags below apply to when a value names none (default: all).")
    ] = "*",
    latency_ms: Annotated[
        list[str] | None, typer.Option(help="Fault: delay, MS or MS+JITTER or lognormal:MEDIAN:P99.")
    ] = None,
    error_rate: Annotated[list[str] | None, typer.Option(help="Fault: share of calls failing, STATUS=RATE.")] = None,
    graphql_error_rate: Annotated[
        list[str] | None, typer.Option(help="Fault: share of Railway calls answered 200 with GraphQL errors.")
    ] = None,
    throttle_rate: Annotated[list[str] | None, typer.Option(help="Fault: share of calls answered 429.")] = None,
    retry_after: Annotated[list[str] | None, typer.Option(help="Fault: Retry-After of those 429s, seconds.")] = None,
    rate_limit: Annotated[list[str] | None, typer.Option(help="Fault: token bucket, CALLS/WINDOW (1/30s).")] = None,
    timeout_rate: Annotated[list[str] | None, typer.Option(help="Fault: share of calls that hang.")] = None,
    timeout_seconds: Annotated[list[str] | None, typer.Option(help="Fault: how long they hang (30).")] = None,
    timeout_mode: Annotated[list[str] | None, typer.Option(help="Fault: then 504 or drop.")] = None,
    list_lag: Annotated[
        list[str] | None, typer.Option(help="Fault: seconds a new resource stays out of listings.")
    ] = None,
) -> None:
    """Serve simulated Railway, OpenRouter, AgentMail and Telnyx APIs for local testing.

    Fault flags repeat, and a value may start with PROVIDER[:OPERATION]= to aim it.
    Example: --rate-limit railway:volumeCreate=1/30s. Grammar: docs/simulator.md.
    """
    import uvicorn

    from providers.simulated.app import Simulator, SimulatorSettings, base_urls
    from providers.simulated.faults import FaultFlagError, parse_fault_flags

    try:
        faults = parse_fault_flags(
            provider=provider,
            latency_ms=latency_ms or (),
            error_rate=error_rate or (),
            graphql_error_rate=graphql_error_rate or (),
            throttle_rate=throttle_rate or (),
            retry_after=retry_after or (),
            rate_limit=rate_limit or (),
            timeout_rate=timeout_rate or (),
            timeout_seconds=timeout_seconds or (),
            timeout_mode=timeout_mode or (),
            list_lag=list_lag or (),
        )
    except FaultFlagError as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    simulator = Simulator(SimulatorSettings(deploy_seconds=deploy_seconds, seed=seed, faults=faults))
    root = f"http://{host}:{port}"
    urls = base_urls(root)
    console.print("Simulated providers; point the reconciler at them with:")
    for name, url in urls.items():
        console.print(f"  {name.upper()}_API_URL={url}")
    console.print(f"  RAILWAY_PROJECT_ID={simulator.railway.project_id}", soft_wrap=True)
    console.print("  RAILWAY_ENVIRONMENT_NAME=production")
    console.print(f"Every resource held: GET {root}/_admin/resources")
    console.print(f"Fault knobs: GET or PUT {root}/_admin/faults", soft_wrap=True)
    console.print(f"Requests served: GET {root}/_admin/requests", soft_wrap=True)
    for line in faults.describe():
        console.print(f"  fault {line}", markup=False, highlight=False, soft_wrap=True)
    uvicorn.run(simulator.app(), host=host, port=port, log_level="warning")


@app.command("demo")
def demo_command(
    instances: Annotated[int, typer.Option(help="How many desired instances to converge.", min=1, max=500)] = 25,
    deploy_seconds: Annotated[float, typer.Option(help="Simulated Railway deploy time.")] = 2.0,
    timeout: Annotated[float, typer.Option(help="Give up after this many seconds per phase.")] = 120.0,
    error_rate: Annotated[
        float, typer.Option(help="Share of provider calls answered 500/503 (e.g. 0.2).", min=0, max=0.9)
    ] = 0.0,
    throttle_rate: Annotated[
        float, typer.Option(help="Share of provider calls answered 429 with Retry-After (e.g. 0.1).", min=0, max=0.9)
    ] = 0.0,
) -> None:
    """Converge instances against simulated providers on an embedded Postgres, then tear them down."""
    from reconciler.demo import run_demo

    settings = settings_or_exit()
    with database(settings) as url:
        ok = run_async(
            run_demo(
                url,
                console,
                instances=instances,
                deploy_seconds=deploy_seconds,
                time_limit=timeout,
                error_rate=error_rate,
                throttle_rate=throttle_rate,
            )
        )
    if not ok:
        raise typer.Exit(EXIT_FAILURE)


def main() -> None:
    # pgserver's platformdirs warns when XDG_RUNTIME_DIR is unset (containers, CI): harmless noise.
    warnings.filterwarnings("ignore", category=UserWarning, module="platformdirs")
    configure_logging()
    try:
        app()
    except CommandError as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(exc.code)
    except (SettingsError, DatabaseError) as exc:
        err_console.print(f"error: {exc}", highlight=False, markup=False)
        sys.exit(EXIT_FAILURE)
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":
    main()
