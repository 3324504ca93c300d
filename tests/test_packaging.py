"""The product as a user installs it: a wheel in a fresh virtualenv, not the source tree.

The wheel is built offline from a copy of just what packaging reads (so the test never writes
into the checkout), installed with ``--no-deps --no-index`` into a new virtualenv that borrows
this environment's already-installed dependencies through a ``.pth`` file (a path listed there
is importable, but the ``.pth`` files inside it, such as this checkout's editable-install hook,
are not run), and driven through its own ``reconciler`` console script from a directory outside
the checkout. A fresh database then needs ``reconciler migrate``, which must find the migrations
inside the installed package.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import sysconfig
import uuid
import zipfile
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from reconciler.db import DatabaseError, create_database, load_migrations, migrate

ROOT = Path(__file__).resolve().parent.parent
PACKAGED = ("pyproject.toml", "README.md", "cli.py", "reconciler", "providers", "desired_state", "migrations")


@pytest.fixture
def empty_db_url(pg_server_url: str) -> Iterator[str]:
    """A database with no schema at all (what a new deployment starts from)."""
    name = f"e_{uuid.uuid4().hex[:16]}"
    yield create_database(pg_server_url, name)
    with psycopg.connect(pg_server_url, autocommit=True) as conn:
        conn.execute(psycopg.sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(psycopg.sql.Identifier(name)))


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` directory of a fresh virtualenv holding only the wheel built from this tree."""
    work = tmp_path_factory.mktemp("wheel")
    source = work / "source"
    source.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")
    for name in PACKAGED:
        path = ROOT / name
        if path.is_dir():
            shutil.copytree(path, source / name, ignore=ignore)
        else:
            shutil.copy2(path, source / name)
    dist = work / "dist"
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "--no-input"]
    subprocess.run(
        [*pip, "wheel", "--no-deps", "--no-build-isolation", "--no-index", "-q", "-w", str(dist), str(source)],
        check=True,
        capture_output=True,
    )
    [wheel] = dist.glob("*.whl")
    with zipfile.ZipFile(wheel) as archive:
        shipped = {Path(name).name for name in archive.namelist() if name.startswith("migrations/")}
    assert {f"{m.name}.sql" for m in load_migrations()} <= shipped

    venv = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    python = venv / "bin" / "python"
    site = subprocess.run(
        [str(python), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    dependencies = {sysconfig.get_path("purelib"), sysconfig.get_path("platlib")}
    (Path(site) / "_reconciler_dependencies.pth").write_text("\n".join(sorted(dependencies)) + "\n")
    subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", "install", "--no-deps", "--no-index", str(wheel)],
        check=True,
        capture_output=True,
        cwd=work,
        env=_clean_env(),
    )
    return venv / "bin"


def _clean_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(("SERVICE", "POOL_"))}
    return env | extra


def _reconciler(bin_dir: Path, *args: str, db_url: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(bin_dir / "reconciler"), *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        env=_clean_env(SERVICE_DATABASE_URL=db_url),
        timeout=120,
    )


def test_the_installed_wheel_runs_from_its_own_files(installed: Path, tmp_path: Path) -> None:
    probe = "import cli, migrations, reconciler.cli; print(cli.__file__, migrations.__file__, reconciler.cli.__file__)"
    result = subprocess.run(
        [str(installed / "python"), "-c", probe], capture_output=True, text=True, cwd=tmp_path, env=_clean_env()
    )
    assert result.returncode == 0, result.stderr
    venv = installed.parent.resolve()
    assert all(Path(path).resolve().is_relative_to(venv) for path in result.stdout.split())


def test_a_wheel_install_migrates_a_fresh_database_and_then_works(
    installed: Path, empty_db_url: str, tmp_path: Path
) -> None:
    before = _reconciler(installed, "status", db_url=empty_db_url, cwd=tmp_path)
    assert before.returncode == 1
    assert before.stderr.strip().splitlines() == [
        "error: the database has no schema yet: run `reconciler migrate` first"
    ]

    migrated = _reconciler(installed, "migrate", db_url=empty_db_url, cwd=tmp_path)
    assert migrated.returncode == 0, migrated.stderr
    assert migrated.stdout.startswith("applied " + ", ".join(m.name for m in load_migrations()))

    again = _reconciler(installed, "migrate", db_url=empty_db_url, cwd=tmp_path)
    assert again.returncode == 0 and "schema is up to date" in again.stdout

    after = _reconciler(installed, "status", "--json", db_url=empty_db_url, cwd=tmp_path)
    assert after.returncode == 0, after.stderr
    assert after.stdout.strip() == "[]"


def test_migrate_refuses_to_find_no_migrations(empty_db_url: str, tmp_path: Path) -> None:
    with pytest.raises(DatabaseError, match="no migration files found"):
        migrate(empty_db_url, tmp_path)
    with psycopg.connect(empty_db_url) as conn:
        assert conn.execute("SELECT to_regclass('schema_migrations')").fetchone() == (None,)
