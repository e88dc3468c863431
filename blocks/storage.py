"""Turn HARVEST_STORAGE_URL into an object store and a Prefect result-storage block that point at the same place.

Run files and Prefect's persisted task results share one root, so deleting `runs/<id>/` removes both: every
result of a run, its failed tasks' included, is under `runs/<id>/results/`.

prefect-aws is imported only where an S3 block is made or loaded: importing it costs ~0.7 CPU-s (its ECS worker and
observers come with the package), which every command and run on a local folder paid for nothing.
"""

from __future__ import annotations

import logging
import re
import sys
import threading
from functools import lru_cache
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast
from urllib.parse import unquote, urlsplit

from prefect.filesystems import LocalFileSystem, WritableFileSystem

from harvest.errors import ConfigError
from harvest.settings import HarvestSettings
from harvest.storage import LocalStore, ObjectStore, S3Store, make_s3_client, open_store
from harvest.storage.keys import failed_result_key

if TYPE_CHECKING:
    from prefect_aws import AwsCredentials, MinIOCredentials, S3Bucket

logger = logging.getLogger("harvest.blocks")

S3_BUCKET_TYPE = "s3-bucket"  # prefect-aws's S3Bucket.get_block_type_slug()
BLOCK_SLUG_PREFIX = f"{S3_BUCKET_TYPE}/"
S3_CLIENT_CONFIG = {"retries": {"max_attempts": 3, "mode": "standard"}, "connect_timeout": 5, "read_timeout": 60}


def _load_bucket_block(slug: str) -> S3Bucket:
    from prefect_aws import S3Bucket

    # A sync call: Prefect types its sync/async dispatch as value-or-coroutine.
    return cast(S3Bucket, S3Bucket.load(slug.removeprefix(BLOCK_SLUG_PREFIX)))


def _is_s3_bucket(block: object) -> bool:
    """isinstance(block, S3Bucket), without importing prefect-aws in a process that never made one."""
    module = sys.modules.get("prefect_aws.s3")
    return module is not None and isinstance(block, module.S3Bucket)


@lru_cache(maxsize=8)
def _cached_store(storage_url: str, endpoint: str | None) -> ObjectStore:
    if storage_url.startswith(BLOCK_SLUG_PREFIX):
        block = _load_bucket_block(storage_url)
        client = block.credentials.get_s3_client()
        return S3Store(client, block.bucket_name, block.bucket_folder or "")
    return open_store(storage_url, s3_endpoint_url=endpoint)


def resolve_store(settings: HarvestSettings) -> ObjectStore:
    """The object store for run files (cached per process: boto3 clients are thread-safe and costly to build)."""
    return _cached_store(settings.storage_url, settings.s3_endpoint_url)


_S3_CLIENTS: list[tuple[type, dict[str, Any], Any]] = []  # (credentials type, their field values, client)
_S3_CLIENTS_LOCK = threading.Lock()


def shared_s3_client(credentials: AwsCredentials | MinIOCredentials) -> Any:
    """The S3 client for `credentials`, one per distinct credential values per process (boto3 clients are
    thread-safe). prefect-aws caches its clients by the credentials block itself, saved document included, which only
    a loaded block matches; matched by the values instead (secrets compare by value), a fleet worker builds the client
    of harvest's own results block before forking (prebuild_results_client) and its runs find it, rather than each
    parsing botocore's S3 model again (~0.4 CPU-s a run). A scan, not a hash: a process has one or two."""
    values = {name: getattr(credentials, name) for name in type(credentials).model_fields}
    with _S3_CLIENTS_LOCK:
        for kind, known, client in _S3_CLIENTS:
            if kind is type(credentials) and known == values:
                return client
        # What prefect-aws's own cached get_client does, outside its cache (forget_clients must reach every copy).
        params = credentials.aws_client_parameters.get_params_override()
        if credentials.region_name is not None:
            params["region_name"] = credentials.region_name
        client = credentials.get_boto3_session().client(service_name="s3", **params)
        _S3_CLIENTS.append((type(credentials), values, client))
        return client


def prebuild_results_client(settings: HarvestSettings) -> bool:
    """Build now the S3 client harvest's own results block (`s3-bucket/harvest-results`, saved from the environment)
    will use; whether there was one to build. Another block's credentials are not known without loading it."""
    if results_block_slug(settings) != f"{BLOCK_SLUG_PREFIX}{RESULTS_BLOCK}":
        return False
    block = _block_for(settings, None)
    assert _is_s3_bucket(block)
    shared_s3_client(cast("S3Bucket", block).credentials)
    return True


def forget_clients() -> None:
    """Drop the object store and the S3 clients built so far: they resolved credentials from this process's
    environment, and a forked run whose environment differs (its job variables) must build its own."""
    _cached_store.cache_clear()
    with _S3_CLIENTS_LOCK:
        _S3_CLIENTS.clear()


RESULTS_BLOCK = "harvest-results"  # harvest's own result-storage block, unless HARVEST_RESULT_STORAGE_BLOCK names one


def result_storage_block(settings: HarvestSettings) -> WritableFileSystem:
    """The one saved block harvest's tasks persist their results in, rooted where run files go, as the tasks of
    one run write through it (`run_scoped`: Prefect's records of failed tasks go under the run's prefix too).

    Prefect refuses an unsaved block as task result storage (TypeError at decoration), so it is a saved one: the
    block HARVEST_RESULT_STORAGE_BLOCK names (never saved over: a ConfigError when it is rooted elsewhere), else
    harvest's own `harvest-results` (saved only when missing or rooted elsewhere), else, with
    HARVEST_STORAGE_URL=s3-bucket/<name>, that block. Loaded once per run: a later change to the block does not
    move the results of a run under way.
    """
    if settings.result_storage_block:
        block = _load(settings.result_storage_block)
        if block is None:
            raise ConfigError(f"HARVEST_RESULT_STORAGE_BLOCK names {settings.result_storage_block}, which does not "
                              "exist: `harvest blocks register` saves it from HARVEST_STORAGE_URL")
        if not _rooted_at(block, settings):
            raise ConfigError(f"result storage block {settings.result_storage_block} is rooted at {_root_of(block)}, "
                              f"not at HARVEST_STORAGE_URL {settings.storage_url}: results there would outlive "
                              "their runs (the sweep deletes under the storage URL only)")
        return run_scoped(block)
    if settings.storage_url.startswith(BLOCK_SLUG_PREFIX):
        return run_scoped(_load_bucket_block(settings.storage_url))
    return run_scoped(own_results_block(settings))


def results_block_slug(settings: HarvestSettings) -> str:
    """The `<type>/<name>` of the block result_storage_block loads: HARVEST_RESULT_STORAGE_BLOCK's,
    HARVEST_STORAGE_URL's own block, or harvest's `<type>/harvest-results`."""
    if settings.result_storage_block:
        return settings.result_storage_block
    if settings.storage_url.startswith(BLOCK_SLUG_PREFIX):
        return settings.storage_url
    return f"{_slug_type(_block_for(settings, None))}/{RESULTS_BLOCK}"


def own_results_block(settings: HarvestSettings) -> WritableFileSystem:
    """harvest's own result-storage block (`<type>/harvest-results`, its type following HARVEST_STORAGE_URL): loaded,
    and saved only when missing or rooted elsewhere (with the environment's credentials: `harvest blocks register`
    saves it with the registered ones)."""
    wanted = _block_for(settings, None)
    existing = _load(f"{_slug_type(wanted)}/{RESULTS_BLOCK}")
    if existing is not None and _rooted_at(existing, settings):
        return existing
    wanted.save(RESULTS_BLOCK, overwrite=True)
    if existing is not None:
        logger.warning("result storage block %s/%s pointed at %s; now at %s", _slug_type(wanted), RESULTS_BLOCK,
                       _root_of(existing), settings.storage_url)
    return wanted


def save_results_block(settings: HarvestSettings, credentials: AwsCredentials) -> tuple[str, str, str]:
    """Save the result-storage block runs will use (`harvest blocks register`): (its slug, created | updated |
    skipped, a note). HARVEST_RESULT_STORAGE_BLOCK's name if set, else harvest-results; its type follows
    HARVEST_STORAGE_URL."""
    if settings.storage_url.startswith(BLOCK_SLUG_PREFIX):
        return settings.storage_url, "skipped", "results go to HARVEST_STORAGE_URL's own block"
    wanted = _block_for(settings, credentials)
    kind = _slug_type(wanted)
    slug = settings.result_storage_block or f"{kind}/{RESULTS_BLOCK}"
    if not slug.startswith(f"{kind}/"):
        return slug, "skipped", f"HARVEST_STORAGE_URL needs a {kind} block"
    existed = _load(slug) is not None
    wanted.save(slug.split("/", 1)[1], overwrite=True)
    return slug, "updated" if existed else "created", ""


def _block_for(settings: HarvestSettings, credentials: AwsCredentials | None) -> WritableFileSystem:
    parts = urlsplit(settings.storage_url)
    if parts.scheme == "file":
        root = Path(unquote(parts.path))
        root.mkdir(parents=True, exist_ok=True)
        return LocalFileSystem(basepath=str(root))
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    if credentials is None:
        # Bounded retries and timeouts: a dead endpoint should fail a step in seconds, not minutes.
        client_parameters = AwsClientParameters(endpoint_url=settings.s3_endpoint_url, config=S3_CLIENT_CONFIG)
        credentials = AwsCredentials(aws_client_parameters=client_parameters)
    return S3Bucket(bucket_name=parts.netloc, bucket_folder=parts.path.strip("/"), credentials=credentials)


def _slug_type(block: WritableFileSystem) -> str:
    return str(block.get_block_type_slug())


def _load(slug: str) -> WritableFileSystem | None:
    """A saved block by `<type>/<name>`, None when there is none.

    The two types harvest saves load through their own class: `Block.load` finds the class of any other type by
    first importing every installed Prefect collection (prefect-dask's `distributed`, prefect-docker's SDK), ~1.1
    CPU-s more for every process that loads harvest's results block, that is every run."""
    from prefect.blocks.core import Block
    from prefect.exceptions import ObjectNotFound

    kind, _, name = slug.partition("/")
    try:
        if kind == S3_BUCKET_TYPE:
            return _load_bucket_block(slug)
        if kind == LocalFileSystem.get_block_type_slug():
            return cast(WritableFileSystem, LocalFileSystem.load(name))  # sync call (see _load_bucket_block)
        return cast(WritableFileSystem, Block.load(slug))
    except (ValueError, ObjectNotFound):
        return None


def _root_of(block: WritableFileSystem | None) -> str:
    if _is_s3_bucket(block):
        bucket = cast("S3Bucket", block)
        endpoint = bucket.credentials.aws_client_parameters.endpoint_url
        where = f"s3://{bucket.bucket_name}/{(bucket.bucket_folder or '').strip('/')}"
        return where + (f" at {endpoint}" if endpoint else "")
    if isinstance(block, LocalFileSystem):
        return Path(block.basepath or ".").expanduser().resolve().as_uri()
    return repr(block)


def _rooted_at(block: WritableFileSystem, settings: HarvestSettings) -> bool:
    """Whether `block` stores at HARVEST_STORAGE_URL's root (bucket, folder and endpoint, or folder)."""
    parts = urlsplit(settings.storage_url)
    if _is_s3_bucket(block) and parts.scheme == "s3":
        bucket = cast("S3Bucket", block)
        endpoint = bucket.credentials.aws_client_parameters.endpoint_url
        return (bucket.bucket_name, (bucket.bucket_folder or "").strip("/"), endpoint or None) == (
            parts.netloc, parts.path.strip("/"), settings.s3_endpoint_url or None)
    if isinstance(block, LocalFileSystem) and parts.scheme == "file":
        return Path(block.basepath or ".").expanduser().resolve() == Path(unquote(parts.path)).resolve()
    return False


# --- results of failed tasks under their run's prefix -------------------------------------------------------

_PREFECT_RANDOM_KEY = re.compile(r"[0-9a-f]{32}")


def _run_of_context() -> str | None:
    """The harvest run a task or flow under way in this thread belongs to: its `run_id` parameter (a task's, or the
    flow's, as in import-run), else its flow run's id (scrape-website's run id)."""
    from prefect.context import FlowRunContext, TaskRunContext

    task_context = TaskRunContext.get()
    if task_context is not None:
        run_id = (task_context.parameters or {}).get("run_id")
        return str(run_id or task_context.task_run.flow_run_id or "") or None
    flow_context = FlowRunContext.get()
    if flow_context is not None and flow_context.flow_run is not None:
        return str((flow_context.flow_run.parameters or {}).get("run_id") or flow_context.flow_run.id)
    return None


def scoped_key(path: str) -> str:
    """The key a result is stored under. harvest's own keys (`runs/<id>/results/<step>.json`) stay as they are.
    A bare random key is Prefect's record of a failed task (prefect.states.exception_to_failed_state names it with
    uuid4().hex, ignoring the task's result_storage_key): it goes under the run's prefix, so it is swept with the
    run instead of piling up at the storage root. Outside any run it stays where Prefect put it."""
    if not _PREFECT_RANDOM_KEY.fullmatch(path):
        return path
    run_id = _run_of_context()
    return failed_result_key(run_id, path) if run_id else path


class _RunScoped:
    """Mixed into a result-storage block class: every path is resolved through `scoped_key` first."""

    def _resolve_path(self, path: Any, *args: Any, **kwargs: Any) -> Any:
        return super()._resolve_path(scoped_key(path) if isinstance(path, str) else path,  # type: ignore[misc]
                                     *args, **kwargs)


_RUN_SCOPED_S3_LOCK = threading.Lock()


def _run_scoped_s3_bucket_class() -> type[WritableFileSystem]:
    """RunScopedS3Bucket, made on first use (it subclasses prefect-aws's S3Bucket). Kept as a module attribute under
    its own name, so pickle finds it by reference (module __getattr__ below makes it in a process that unpickles
    one first)."""
    with _RUN_SCOPED_S3_LOCK:  # one class per process: Prefect registers each block class by its type slug
        made = globals().get("RunScopedS3Bucket")
        if made is not None:
            return cast(type[WritableFileSystem], made)
        from prefect_aws import S3Bucket

        class RunScopedS3Bucket(_RunScoped, S3Bucket):
            """The saved S3Bucket as harvest's tasks write through it (not a block type of its own: never saved);
            its reads and writes go through the process's shared client for its credentials."""

            _block_type_slug = "harvest-run-scoped-s3-bucket"

            def _get_s3_client(self) -> Any:
                return shared_s3_client(self.credentials)

        RunScopedS3Bucket.__qualname__ = "RunScopedS3Bucket"
        globals()["RunScopedS3Bucket"] = RunScopedS3Bucket
        return RunScopedS3Bucket


def __getattr__(name: str) -> Any:
    if name == "RunScopedS3Bucket":
        return _run_scoped_s3_bucket_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


class RunScopedLocalFileSystem(_RunScoped, LocalFileSystem):
    """The saved LocalFileSystem as harvest's tasks write through it (never saved)."""

    _block_type_slug = "harvest-run-scoped-local-file-system"


def run_scoped(block: WritableFileSystem) -> WritableFileSystem:
    """`block` (a saved S3Bucket or LocalFileSystem) as a run-scoped copy that keeps its saved document's id, so
    Prefect accepts it as task result storage and records results against that document; other types as they are."""
    scoped_type: type[WritableFileSystem] | None = (
        _run_scoped_s3_bucket_class() if _is_s3_bucket(block) else
        RunScopedLocalFileSystem if isinstance(block, LocalFileSystem) else None
    )
    if scoped_type is None or isinstance(block, _RunScoped):
        return block
    scoped = scoped_type.model_validate(dict(block))
    scoped._block_document_id = block._block_document_id  # noqa: SLF001 - the saved document it stands for
    scoped._block_document_name = block._block_document_name  # noqa: SLF001
    scoped._is_anonymous = block._is_anonymous  # noqa: SLF001
    return scoped


__all__ = ["resolve_store", "result_storage_block", "results_block_slug", "own_results_block", "save_results_block",
           "run_scoped", "shared_s3_client", "prebuild_results_client", "forget_clients", "LocalStore", "S3Store",
           "make_s3_client"]
