"""``reconciler simulate``: the simulated provider APIs and the util.echo upstream on one port, with fault knobs.

The fault flags are parsed by the simulator's own grammar (``docs/simulator.md``); a bad flag is
bad input (exit 2) with the flag named.
"""

from __future__ import annotations

from typing import Annotated

import typer

from reconciler.cli.common import EXIT_BAD_INPUT, console, fail

app = typer.Typer()


@app.command("simulate", rich_help_panel="Serving")
def simulate_command(
    port: Annotated[int, typer.Option(help="Loopback port of the simulated providers.")] = 8090,
    host: Annotated[str, typer.Option(help="Address to bind (loopback by default).")] = "127.0.0.1",
    deploy_seconds: Annotated[float, typer.Option(help="How long a simulated Railway deploy takes.")] = 3.0,
    seed: Annotated[int | None, typer.Option(help="Seed for reproducible ids and fault decisions.")] = None,
    project_id: Annotated[
        str | None, typer.Option(envvar="RAILWAY_PROJECT_ID", help="Railway project id to serve (default: seeded).")
    ] = None,
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
    """Serve simulated Railway, OpenRouter, AgentMail and Telnyx APIs (and util.echo's upstream) for testing.

    Fault flags repeat, and a value may start with PROVIDER[:OPERATION]= to aim it.
    Example: --rate-limit railway:volumeCreate=1/30s. Grammar: docs/simulator.md.
    """
    import uvicorn

    from providers.simulated.app import Simulator, SimulatorSettings
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
        settings = SimulatorSettings(deploy_seconds, seed, faults, railway_project_id=project_id or None)
        simulator = Simulator(settings)
    except (FaultFlagError, ValueError) as exc:
        fail(str(exc), EXIT_BAD_INPUT)
    root = f"http://{host}:{port}"
    console.print("Simulated providers; point the reconciler at them with:")
    for variable, value in simulator.client_env(root).items():
        console.print(f"  {variable}={value}", markup=False, highlight=False, soft_wrap=True)
    console.print(f"Every resource held: GET {root}/_admin/resources")
    console.print(f"Fault knobs: GET or PUT {root}/_admin/faults", soft_wrap=True)
    console.print(f"Requests served: GET {root}/_admin/requests", soft_wrap=True)
    for line in faults.describe():
        console.print(f"  fault {line}", markup=False, highlight=False, soft_wrap=True)
    uvicorn.run(simulator.app(), host=host, port=port, log_level="warning")
