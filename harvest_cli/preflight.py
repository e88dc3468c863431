"""Everything `harvest` can check before Prefect starts, so a mistake costs a second, not a Prefect start and a
traceback: the settings, the database (its URL, its driver, that it answers), the storage (writable folder,
reachable bucket), the start URL (syntax and the address guard, DNS included), `--from-raw` sources and run ids.

Nothing here imports Prefect. Each check raises CliError with the one line to print and the exit code.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

from harvest_cli.errors import CliError, ExitCode, validation_message

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from harvest.settings import HarvestSettings
    from harvest.storage import ObjectStore

SUPPORTED_DATABASES = "PostgreSQL (postgresql+psycopg://user:password@host/db) or SQLite (sqlite:////abs/path.db)"
STORAGE_FORMS = "s3://bucket/prefix, file:///abs/path or s3-bucket/<block name>"


def settings() -> HarvestSettings:
    """The settings from the environment; an invalid variable is one line naming it (exit 2)."""
    from pydantic import ValidationError

    from harvest.settings import HarvestSettings, get_settings

    try:
        return get_settings()
    except ValidationError as exc:
        names = {name: _variable(name, field) for name, field in HarvestSettings.model_fields.items()}
        raise CliError(f"invalid setting: {validation_message(exc, names)}", ExitCode.BAD_INPUT) from exc


def _variable(name: str, field: Any) -> str:
    """The environment variable a settings field is read from (its first alias, else HARVEST_<NAME>)."""
    alias = field.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return str(choices[0])
    return f"HARVEST_{name.upper()}"


def database(settings: HarvestSettings) -> Engine:
    """The metadata database, checked and migrated: a URL of a supported kind, its driver installed, the server
    answering (exit 2 for the URL, 3 when it cannot be reached or migrated)."""
    import sqlalchemy as sa
    from sqlalchemy.engine import make_url

    from harvest.db.engine import get_engine, upgrade
    from harvest.errors import DatabaseError

    url = settings.database_url
    try:
        parsed = make_url(url)
    except sa.exc.ArgumentError as exc:
        raise CliError(f"HARVEST_DATABASE_URL {url!r} is not a database URL: use {SUPPORTED_DATABASES}") from exc
    shown = parsed.render_as_string(hide_password=True)
    backend = parsed.get_backend_name()
    if backend not in ("postgresql", "sqlite"):
        raise CliError(f"HARVEST_DATABASE_URL {shown}: {backend} is not supported; use {SUPPORTED_DATABASES}")
    try:
        parsed.get_dialect().import_dbapi()
    except ImportError as exc:
        raise CliError(
            f"HARVEST_DATABASE_URL {shown}: its driver is not installed ({exc}); use {SUPPORTED_DATABASES}"
        ) from exc
    except sa.exc.NoSuchModuleError as exc:
        raise CliError(f"HARVEST_DATABASE_URL {shown}: unknown driver ({exc}); use {SUPPORTED_DATABASES}") from exc
    if backend == "sqlite" and parsed.database not in (None, "", ":memory:"):
        folder = Path(str(parsed.database)).expanduser().parent
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CliError(
                f"HARVEST_DATABASE_URL {shown}: cannot create its folder {folder} ({exc.strerror})",
                ExitCode.UNAVAILABLE,
            ) from exc
    engine = get_engine(url)
    try:
        with engine.connect() as connection:
            connection.exec_driver_sql("SELECT 1")
    except sa.exc.SQLAlchemyError as exc:
        reason = str(getattr(exc, "orig", None) or exc).strip().splitlines()[0]
        raise CliError(
            f"cannot reach the database {shown}: {reason}; start it, or point HARVEST_DATABASE_URL at one that runs",
            ExitCode.UNAVAILABLE,
        ) from exc
    try:
        upgrade(url)
    except DatabaseError as exc:
        raise CliError(f"{exc}".splitlines()[0], ExitCode.UNAVAILABLE) from exc
    return engine


def storage(settings: HarvestSettings) -> ObjectStore | None:
    """The object store, checked: a local folder must be writable, a bucket must answer. None for a Prefect block
    slug (`s3-bucket/<name>`), which only Prefect can load."""
    from harvest.errors import StorageError
    from harvest.storage import LocalStore, open_store

    url = settings.storage_url
    if url.startswith("s3-bucket/"):
        return None
    parts = urlsplit(url)
    if parts.scheme == "file":
        root = Path(unquote(parts.path))
        try:
            root.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile(dir=root, prefix=".harvest-write-check-"):
                pass
        except OSError as exc:
            raise CliError(
                f"storage {url} is not writable ({exc.strerror or exc}): make the folder writable or point "
                "HARVEST_STORAGE_URL elsewhere", ExitCode.UNAVAILABLE,
            ) from exc
        return LocalStore(root)
    if parts.scheme == "s3":
        _bucket_answers(url, parts.netloc, settings.s3_endpoint_url)
        try:
            return open_store(url, s3_endpoint_url=settings.s3_endpoint_url)
        except StorageError as exc:
            raise CliError(f"HARVEST_STORAGE_URL: {exc}") from exc
    raise CliError(f"HARVEST_STORAGE_URL {url!r}: use {STORAGE_FORMS}")


def _bucket_answers(url: str, bucket: str, endpoint: str | None) -> None:
    """HEAD the bucket once, without retries and with short timeouts: exists, reachable, and these credentials
    may use it."""
    import boto3
    from botocore.config import Config
    from botocore.exceptions import BotoCoreError, ClientError, NoCredentialsError

    if not bucket:
        raise CliError(f"HARVEST_STORAGE_URL {url!r} names no bucket: use {STORAGE_FORMS}")
    config = Config(retries={"max_attempts": 1, "mode": "standard"}, connect_timeout=3, read_timeout=10,
                    s3={"addressing_style": "path"} if endpoint else None)
    where = f" at {endpoint}" if endpoint else ""
    try:
        boto3.client("s3", endpoint_url=endpoint, config=config).head_bucket(Bucket=bucket)
    except NoCredentialsError as exc:
        raise CliError(f"storage {url}: no AWS credentials (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or a "
                       "profile)", ExitCode.UNAVAILABLE) from exc
    except ClientError as exc:
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
        if status == 404:
            raise CliError(f"storage {url}: bucket {bucket!r} does not exist{where}; create it or fix "
                           "HARVEST_STORAGE_URL", ExitCode.UNAVAILABLE) from exc
        if status == 403:
            raise CliError(f"storage {url}: access to bucket {bucket!r} denied{where}; check the AWS credentials",
                           ExitCode.UNAVAILABLE) from exc
        raise CliError(f"storage {url}: {exc}", ExitCode.UNAVAILABLE) from exc
    except BotoCoreError as exc:
        raise CliError(f"storage {url}: cannot reach S3{where} ({exc}); check HARVEST_S3_ENDPOINT_URL and the "
                       "network", ExitCode.UNAVAILABLE) from exc


def start_url(url: str, settings: HarvestSettings) -> None:
    """The address guard, before anything runs: http(s), a host that resolves, and (unless private networks are
    allowed) only to public addresses. Exit 2 with the guard's reason."""
    from harvest.errors import HarvestError
    from harvest.urls import check_fetch_allowed

    try:
        check_fetch_allowed(url, allow_private_networks=settings.allow_private_networks)
    except HarvestError as exc:
        raise CliError(str(exc)) from exc


def raw_source(source: str, store: ObjectStore | None) -> None:
    """A `--from-raw` source must exist: an object of the store (a kept run's raw_activities URI) or a local file."""
    from harvest.errors import StorageError

    if store is not None:
        try:
            key = store.key_for(source)
        except StorageError:
            key = None
        if key is not None:
            if store.head(key) is None:
                raise CliError(f"--from-raw {source}: no such object in the store (was its run cleaned? see "
                               "harvest runs show ID)")
            return
    if source.startswith("s3://"):
        if store is None:
            return  # a block slug's bucket: Prefect loads it
        raise CliError(f"--from-raw {source}: not in HARVEST_STORAGE_URL's bucket ({store.uri_for('')})")
    path = Path(unquote(urlsplit(source).path)) if source.startswith("file://") else Path(source)
    if not path.is_file():
        raise CliError(f"--from-raw {source}: no such file; give a JSONL file or a kept run's raw_activities URI "
                       "(harvest runs files ID)")
    if not os.access(path, os.R_OK):
        raise CliError(f"--from-raw {source}: not readable")


def run_row(engine: Engine, run_id: str) -> dict[str, Any]:
    """The run's row, or exit 2 saying there is no such run."""
    from harvest.db.runs import get_run

    row = get_run(engine, run_id)
    if row is None:
        raise CliError(f"no run {run_id}: `harvest runs list` shows the runs this database knows")
    return row
