"""The ``reconciler`` command line, one module per family of commands.

``cli.py`` at the top of the repository stays the console script's entry point and holds only the
wiring: it builds the root typer app, registers each module's sub-app here with one
``app.add_typer`` line, and turns the expected failures (:class:`reconciler.cli.common.CommandError`,
a bad setting, an unreachable or unmigrated database) into one line on stderr and an exit code.
What every command shares (settings, the database, the exit codes, id checks) lives in
:mod:`reconciler.cli.common`.
"""
