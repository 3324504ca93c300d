"""Long-running commands: ``run`` (the loop, the HTTP API and ``/metrics``) and ``demo``."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import signal
from typing import Annotated

import typer

from reconciler.cli.common import (
    EXIT_BAD_INPUT,
    EXIT_FAILURE,
    console,
    database,
    fail,
    require_current_schema,
    require_railway,
    run_async,
    settings_or_exit,
)
from reconciler.cli.webhooks import webhook_settings_or_exit
from reconciler.engine import EngineSettings
from reconciler.gc_tuning import settle_after_start_up
from reconciler.runtime import Runtime, RuntimeOptions
from reconciler.settings import SettingsError

PANEL = "Serving"
app = typer.Typer()


@app.command("run", rich_help_panel=PANEL)
def run_command(
    metrics_port: Annotated[int, typer.Option(help="Serve /metrics on this port; 0 disables.")] = 9464,
    api: Annotated[bool, typer.Option("--api/--no-api", help="Serve the HTTP API on PORT (default 3002).")] = True,
    loop: Annotated[bool, typer.Option("--loop/--no-loop", help="Run the reconcile loop.")] = True,
    host: Annotated[
        str, typer.Option(help="Address the HTTP API and /metrics bind.")
    ] = "0.0.0.0",  # noqa: S104 (a server)
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
    from desired_state.http import ApiConfig, ApiConfigError, ApiStartError, create_app
    from desired_state.http import serve as serve_api

    if not (api or loop):
        fail("nothing to run: --no-api and --no-loop together", EXIT_BAD_INPUT)
    settings = settings_or_exit()
    webhook_settings = webhook_settings_or_exit()
    if loop:
        require_railway(settings)
    if api:
        try:
            api_key = settings.require_api_key().get_secret_value()
        except SettingsError as exc:
            fail(f"{exc} (or run with --no-api)", EXIT_BAD_INPUT)
    with database(settings) as url:
        require_current_schema(url)
        if metrics_port:
            from reconciler.metrics import serve_metrics

            try:
                serve_metrics(metrics_port, host)
            except OSError as exc:
                fail(f"cannot serve metrics on {host}:{metrics_port}: {exc.strerror}")
        options = RuntimeOptions(
            engine=EngineSettings(poll_interval=poll_interval, lease_seconds=lease_seconds),
            tick_seconds=tick,
            observe_seconds=observe_seconds,
            webhooks=webhook_settings,
        )
        runtime = Runtime(settings, url, options)
        api_config = None
        if api:
            from desired_state.http.routes_paid import PaidApiConfig, PaidRoutes

            paid = PaidRoutes(
                PaidApiConfig(
                    registry=runtime.services,
                    proxy_call=runtime.handlers.call_proxy,
                    on_admission=runtime.metrics.count_admission,
                )
            )
            configured = {"openrouter": settings.openrouter_key, "agentmail": settings.agentmail_key}
            configured["telnyx"] = settings.telnyx_key
            api_config = ApiConfig(
                api_key=api_key,
                database_url=url,
                project_id=settings.railway_project_id,
                environment_id=settings.railway_environment_id,
                name_prefix=settings.name_prefix,
                wait_timeout=wait_timeout,
                tools_enabled=frozenset(tool for tool, key in configured.items() if key),
            )
            try:
                api_config.check()
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
                    tasks.append(runtime.webhooks.run_forever(stop))
                if api_config is not None:
                    # /readyz reports the loop by its last finished tick or pass (when it runs here).
                    probe = runtime.worker.seconds_since_progress if loop else None
                    http_app = create_app(dataclasses.replace(api_config, loop_probe=probe), paid=paid)
                    tasks.append(serve_api(http_app, host, settings.port, stop))
                settle_after_start_up()
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


@app.command("demo", rich_help_panel=PANEL)
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
