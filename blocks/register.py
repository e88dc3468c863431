"""Create or update harvest's Prefect blocks from the environment, so the UI and deployments can use them.

    python -m blocks.register          # or: harvest blocks register

Blocks (each saved with overwrite=True, so running this again only updates them):

- `aws-credentials/harvest-aws`: AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY (a secret field, only when set),
  AWS_SESSION_TOKEN, AWS_PROFILE, AWS_DEFAULT_REGION / AWS_REGION, and HARVEST_S3_ENDPOINT_URL as the
  client's endpoint URL.
- `s3-bucket/harvest-storage`, when HARVEST_STORAGE_URL is s3://bucket/prefix: that bucket and folder with the
  credentials above. Workers can then use HARVEST_STORAGE_URL=s3-bucket/harvest-storage.
- the result-storage block (`s3-bucket/harvest-results` or `local-file-system/harvest-results`, or the name
  HARVEST_RESULT_STORAGE_BLOCK gives), rooted at HARVEST_STORAGE_URL with the credentials above: every task result
  of a run goes under its `runs/<id>/results/` (blocks/storage.py).
- `secret/harvest-openai-api-key` when OPENAI_API_KEY is set, `secret/harvest-google-maps-api-key` when
  GOOGLE_MAPS_API_KEY is set.

And the global concurrency limits every worker honours (not blocks, but set up the same way), one per enrichment
that declares one (`Enrichment.limit`, harvest/enrich/base.py):
- `harvest-geocoder`: 1 slot decaying at HARVEST_GEOCODER_RATE_PER_SECOND, i.e. a shared rate limit;
- `harvest-openai`: HARVEST_OPENAI_MAX_CONCURRENT slots held while calling OpenAI.

Only block names are printed, never values.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from pydantic import SecretStr

from harvest.settings import HarvestSettings

if TYPE_CHECKING:
    from prefect.blocks.core import Block

AWS_BLOCK = "harvest-aws"
BUCKET_BLOCK = "harvest-storage"
OPENAI_SECRET = "harvest-openai-api-key"
GOOGLE_MAPS_SECRET = "harvest-google-maps-api-key"


@dataclass(frozen=True)
class Registered:
    slug: str  # block type slug / block name, e.g. "secret/harvest-openai-api-key"
    action: str  # "created" | "updated" | "skipped"
    note: str = ""

    def line(self) -> str:
        return f"{self.action:8} {self.slug}" + (f"  ({self.note})" if self.note else "")


def _exists(block_cls: type[Block], name: str) -> bool:
    from prefect.exceptions import ObjectNotFound

    try:
        block_cls.load(name)
    except (ValueError, ObjectNotFound):
        return False
    return True


def _save(block: Block, name: str) -> str:
    existed = _exists(type(block), name)
    block.save(name, overwrite=True)
    return "updated" if existed else "created"


def register_blocks(
    settings: HarvestSettings | None = None, environ: Mapping[str, str] | None = None
) -> list[Registered]:
    """Save harvest's blocks from `settings` and the standard AWS variables of `environ` (default: os.environ)."""
    from prefect.blocks.system import Secret
    from prefect_aws import AwsClientParameters, AwsCredentials, S3Bucket

    from blocks.storage import save_results_block

    settings = settings or HarvestSettings()
    env = os.environ if environ is None else environ
    done: list[Registered] = []

    secret = env.get("AWS_SECRET_ACCESS_KEY") or None
    secret_key = SecretStr(secret) if secret else None
    credentials = AwsCredentials(
        aws_access_key_id=env.get("AWS_ACCESS_KEY_ID") or None,
        aws_secret_access_key=secret_key,
        aws_session_token=env.get("AWS_SESSION_TOKEN") or None,
        profile_name=env.get("AWS_PROFILE") or None,
        region_name=env.get("AWS_DEFAULT_REGION") or env.get("AWS_REGION") or None,
        aws_client_parameters=AwsClientParameters(endpoint_url=settings.s3_endpoint_url),
    )
    done.append(Registered(f"aws-credentials/{AWS_BLOCK}", _save(credentials, AWS_BLOCK)))

    storage = settings.storage_url
    if storage.startswith("s3://"):
        parts = urlsplit(storage)
        bucket = S3Bucket(bucket_name=parts.netloc, bucket_folder=parts.path.strip("/"), credentials=credentials)
        done.append(Registered(f"s3-bucket/{BUCKET_BLOCK}", _save(bucket, BUCKET_BLOCK)))
    else:
        done.append(Registered(f"s3-bucket/{BUCKET_BLOCK}", "skipped", "HARVEST_STORAGE_URL is not s3://"))
    results, action, note = save_results_block(settings, credentials)
    done.append(Registered(results, action, note or "task results, under each run's prefix"))

    secrets: list[tuple[str, SecretStr | None, str]] = [
        (OPENAI_SECRET, settings.openai_api_key, "OPENAI_API_KEY"),
        (GOOGLE_MAPS_SECRET, settings.google_maps_api_key, "GOOGLE_MAPS_API_KEY"),
    ]
    for name, value, variable in secrets:
        if value is not None and value.get_secret_value():
            done.append(Registered(f"secret/{name}", _save(Secret(value=value), name)))
        else:
            done.append(Registered(f"secret/{name}", "skipped", f"{variable} not set"))
    done += register_limits(settings)
    return done


def register_limits(settings: HarvestSettings) -> list[Registered]:
    """Create or update the global concurrency limits the enrichments' calls go through (`flows/limits.py`)."""
    from prefect.client.orchestration import get_client  # not `prefect`: its get_client imports flows and tasks too

    from harvest.enrich.registry import enrichments

    limits = [e.limit for e in enrichments() if e.limit is not None]
    wanted = [(limit.name, limit.slots(settings), limit.per_second(settings), limit.note(settings)) for limit in limits]
    done = []
    with get_client(sync_client=True) as client:
        existing = {limit.name for limit in client.read_global_concurrency_limits(limit=200)}
        for name, limit, decay, note in wanted:
            client.upsert_global_concurrency_limit_by_name(name, limit, slot_decay_per_second=decay)
            state = "updated" if name in existing else "created"
            done.append(Registered(f"global-concurrency-limit/{name}", state, note))
    return done


def main(echo: Callable[[str], None] = print) -> list[Registered]:
    registered = register_blocks()
    for item in registered:
        echo(item.line())
    return registered


if __name__ == "__main__":  # pragma: no cover - `python -m blocks.register`
    main()
