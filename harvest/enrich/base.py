"""What an enrichment is, said once: the protocol the flow, the merge, the final writer, the import policy, the
ledger and the estimate go through, so none of them names images, geocoding or embeddings.

An enrichment reads standardized activities and writes a *map*: one line per activity, in `standardized.jsonl`'s
order, with the activity's `id` (the merge zips the maps line by line). Then, for each activity:

- `merged(line)`: what of its map line `merged.jsonl` keeps (None: nothing usable, e.g. a failed download);
- `finish(record, value)`: its fields in the final record (the `activities` schema of `final.jsonl`);
- `row(record)`: its `columns` of the `activities` table, from the final record. The columns are one group
  with a key (the first): the import's keep-on-failure rule takes the group from a new row only when that
  row's key is not NULL, so a run whose enrichment failed never blanks what an earlier run stored.

Two shapes run it, and the flow knows only the shapes:

- `ChunkedEnrichment` (images, geocoding): standardized.jsonl cut in chunks, one task per chunk writing a part
  of the map, then a join of the parts in order (harvest/enrich/join.py). The chunk count follows `work`: the
  records that will cost a request (harvest/enrich/fan_out.py).
- `BatchEnrichment` (embeddings): one job submitted to a service and collected later, polled while it runs; the
  job's handle is persisted, so a resumed run collects the job it paid for.

Its one name (`name`) is the step key in the run row (`<name>.<chunk>` per chunk), the ledger's stage, the
warning prefix, the stem of the Prefect task names and of its result keys. Its file kinds are stored names:
`map_kind` is `<name>_map` for a new enrichment; images (`images_map`), geocoding (`geocoded_map`) and
embeddings (`embeddings_index`) keep the kinds their earlier runs stored.

Add one: a package under harvest/enrich/ with a subclass of one shape, and one line in
harvest/enrich/registry.py (plus a migration when it adds a column). See docs/architecture.md.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from typing import TYPE_CHECKING, Any, ClassVar, Literal

import sqlalchemy as sa
from pydantic import BaseModel

from harvest.models import FileRef, RunConfig
from harvest.pipeline import Chunk, StageResult

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from harvest.cost import Meter
    from harvest.settings import HarvestSettings
    from harvest.storage import ObjectStore

WorkCount = Callable[[list[dict[str, Any]]], int]
"""Of a slice of standardized records (only the enrichment's `work_fields` kept), how many will cost a request."""


def counted(details: Mapping[str, Any], key: str) -> int:
    """A count a stage wrote into its step's details (0 when absent or not a count)."""
    value = details.get(key, 0)
    return int(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else 0


@dataclass(frozen=True)
class GlobalLimit:
    """A limit every worker honours: a Prefect global concurrency limit `harvest blocks register` creates.

    `rate`: `slots` slot(s) decaying at `per_second`, taken before each request (a shared request rate);
    `concurrency`: `slots` slots, one held around each of the enrichment's tasks (calls at once)."""

    name: str
    kind: Literal["rate", "concurrency"]
    slots: Callable[[HarvestSettings], int]
    per_second: Callable[[HarvestSettings], float | None]
    note: Callable[[HarvestSettings], str]


@dataclass(frozen=True)
class EnrichContext:
    """What an enrichment's stage gets: the run's store, database and settings, a meter charging the run's
    ledger under the enrichment's name (made on first use: `meter_for`), and, when its limit is a shared rate,
    the gate to pass before each request (None: only this process's own limiter applies)."""

    store: ObjectStore
    engine: Engine
    settings: HarvestSettings
    run_id: str
    meter_for: Callable[[], Meter]
    gate: Callable[[], None] | None = None

    @cached_property
    def meter(self) -> Meter:
        return self.meter_for()


class Enrichment:
    """One enrichment (see the module docstring). Subclass `ChunkedEnrichment` or `BatchEnrichment`."""

    name: ClassVar[str]
    map_kind: ClassVar[str]
    merged_key: ClassVar[str]
    """Its field in each `merged.jsonl` line."""
    columns: ClassVar[tuple[sa.Column[Any], ...]] = ()
    """The `activities` columns it owns, the group's key first (see the module docstring). A column the schema
    module does not list (a plug-in's, added by its migration) is written too (harvest/import_/table.py)."""
    uncompared: ClassVar[tuple[str, ...]] = ()
    """Columns of the group the policy does not compare (one compared through another: a vector through its
    hash), and the import does not read back to judge a row."""
    limit: ClassVar[GlobalLimit | None] = None
    vectors_kind: ClassVar[str | None] = None
    """The kind of a float32 `.npy` file of one vector per activity it stores (rows in standardized.jsonl's
    order, its merged value the row): the final writer streams it into each record's `embedding`. At most one
    registered enrichment has one (embeddings)."""

    def merged(self, line: dict[str, Any] | None) -> Any:
        """What `merged.jsonl` keeps of this activity's map line (None when the map is missing or the line has
        nothing usable)."""
        return line

    def finish(self, record: dict[str, Any], value: Any) -> None:
        """Set this enrichment's fields of a final record from its merged value (None: none). A new enrichment
        adds its own fields; the built-in ones fill the slots `final_record` keeps for them."""
        record[self.name] = value

    def row(self, record: dict[str, Any]) -> dict[str, Any]:
        """Its `columns` of an `activities` row, from a final record."""
        value = record.get(self.name)
        return {column.name: value for column in self.columns}

    def owns_step(self, step: str) -> bool:
        """Whether a run-row step key is this enrichment's: its name, `<name>.<chunk>`, or `<name>_<part>`."""
        base = step.split(".", 1)[0]
        return base == self.name or base.startswith(self.name + "_")

    def free_counters(self, step: str, items_out: int, details: Mapping[str, Any]) -> dict[str, int]:
        """Ledger counters a finished step of it used that cost nothing (cache hits, downloads avoided)."""
        return {}

    def holds_a_resume_settles(self, steps: Mapping[str, Any]) -> bool:
        """Whether its open budget holds outlive the run's process (a submitted job the service runs anyway,
        which a resumed run collects and charges): reconciling a dead run keeps them."""
        return False

    def estimate(self, records: list[dict[str, Any]], config: RunConfig, settings: HarvestSettings,
                 engine: Engine | None) -> dict[str, int] | None:
        """The usage a run would likely have of it for these standardized records (for `harvest scrape
        --estimate`), counting what earlier runs cached; None: nothing to price."""
        return None


class ChunkedEnrichment(Enrichment):
    """An enrichment cut in chunks of standardized.jsonl, one task each, joined in order (module docstring)."""

    work_fields: ClassVar[tuple[str, ...]] = ()
    """The standardized fields `work` reads (the counting pass keeps only these of each line)."""

    def work(self, engine: Engine | None, settings: HarvestSettings) -> WorkCount | None:
        """How to count the records that will cost a request (they size the fan-out), or None when it is off
        (nothing will cost a request: one chunk). Without `engine`, nothing counts as cached."""
        return len

    def enrich_chunk(self, context: EnrichContext, standardized: FileRef, chunk: Chunk) -> StageResult:
        """Lines `chunk.start`..`chunk.stop` of standardized.jsonl into the map's part `chunk.output(map_kind)`:
        one line per record, in order; a record it cannot enrich is a line with its error, never a failed step."""
        raise NotImplementedError


class BatchEnrichment(Enrichment):
    """An enrichment done by one job a service runs (submitted, then polled until it ends; module docstring).

    The flow calls `submit` once (its result persisted under `submit_result`), then, unless the submission
    finished everything, `collect` again and again (a growing interval) while it raises BatchNotReadyError. Both
    record their own steps: `<name>_submit` and `<name>`."""

    submit_result: ClassVar[str]
    """The result key's step of the submission (its handle), e.g. `embeddings_batch`."""
    job_type: ClassVar[type[BaseModel]]

    def job_option(self, config: RunConfig) -> str:
        """What a submission depends on besides the run's input (e.g. the embeddings model)."""
        return ""

    def submit(self, context: EnrichContext, standardized: FileRef, option: str) -> Submission:
        raise NotImplementedError

    def collect(self, context: EnrichContext, standardized: FileRef, job: Any) -> Collected:
        raise NotImplementedError

    def job_from(self, value: Any) -> Any:
        """A persisted submission as `job_type`. A result stored before its class moved comes back from Prefect
        as the encoder's dict (`{"__class__": <the old path>, "data": {...}}`): read its data, not its name."""
        if value is None or isinstance(value, self.job_type):
            return value
        if isinstance(value, dict) and "__class__" in value and "data" in value:
            value = value["data"]
        return self.job_type.model_validate(value)

    def files_of(self, job: Any) -> list[FileRef] | None:
        """The job's finished files when the submission left nothing to collect, else None."""
        return None


@dataclass
class Submission:
    """What `BatchEnrichment.submit` did: the steps to record (step key → result), and the job (None: nothing
    to collect, or nothing was submitted)."""

    steps: dict[str, StageResult]
    job: Any
    warning: str | None = None
    """Set when the enrichment was skipped altogether (a key missing): the run's warning, nothing recorded."""


@dataclass
class Collected:
    """What `BatchEnrichment.collect` did: the steps to record, the job's files, and warnings of its tidying."""

    steps: dict[str, StageResult]
    files: list[FileRef]
    warnings: list[str]

