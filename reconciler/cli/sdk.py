"""``reconciler sdk generate [--check]``: write (or check) the typed Python SDK in ``sdk/``.

The SDK is generated from the built-in services' definitions at their default settings (prices
live in the catalog, not in the SDK), so it is the same on every machine; CI runs ``--check``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from desired_state.services.builtin import BuiltinSettings, builtin_registry
from reconciler.cli.common import EXIT_FAILURE, console, fail
from reconciler.sdkgen.generate import generate, stale, write

app = typer.Typer(help="The typed Python SDK generated from the service registry.", no_args_is_help=True)


@app.command("generate")
def generate_command(
    check: Annotated[
        bool, typer.Option("--check", help="Write nothing; exit 1 naming each file that is out of date.")
    ] = False,
    out: Annotated[Path, typer.Option(help="The SDK's directory.")] = Path("sdk"),
) -> None:
    """Write sdk/ (package reconciler_sdk) from the registry's definitions."""
    files = generate(builtin_registry(BuiltinSettings()))
    if check:
        outdated = stale(out, files)
        if outdated:
            fail(f"{out} is out of date ({', '.join(outdated)}): run `reconciler sdk generate`", EXIT_FAILURE)
        console.print(f"{out} is up to date", highlight=False)
        return
    changed = write(out, files)
    console.print(f"{out}: {len(changed)} file(s) written" if changed else f"{out} is up to date", highlight=False)
