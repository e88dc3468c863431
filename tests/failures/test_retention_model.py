"""Issue 17's property-style check: seeded random interleavings of run / crash / kill / resume / import / sweep
over a few runs of two URLs, with the real functions against real Postgres and a real local store, and the
invariants checked after every step:

- every `activities.image_uri` exists in storage;
- every run whose files are kept (or that is running) still has every file its live rows list, and every image
  its images maps (whole or in parts) and its final JSONL point at;
- the page memory (`page_cache`) holds only pages of a run that is running or keeps its files: its rows hold
  the raw activities of the run that last wrote or confirmed them, so they are kept no longer than that run's
  files (issue 27 item 7). Runs of both URLs reach three shared pages (a site's pages reached from two start
  URLs), so a row changes hands.

A run's steps are done in the order the flow does them (chunk parts, join, final, digest, import, hook), and a
crash leaves exactly what the flow leaves at that point. The clock of the sweeps only moves forward, by up to
a month at a time, so every object soon looks old: nothing is protected by its age alone.
"""

from __future__ import annotations

import hashlib
import random
import uuid
from datetime import timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from harvest.crawl.page_cache import PageCache
from harvest.crawl.revalidate import Remembered
from harvest.db import runs as run_rows
from harvest.db.engine import get_engine, utcnow
from harvest.db.schema import activities, page_cache, scrape_runs
from harvest.diff.compare import digest_key
from harvest.enrich.join import combine_parts
from harvest.errors import RunAlreadyRunningError
from harvest.import_.stage import import_final_records, import_kept_run
from harvest.net.conditional import Validators
from harvest.retention.policy import RetentionPolicy, cleanup_run, sweep
from harvest.retention.queries import FILES_KEPT
from harvest.storage import LocalStore, iter_jsonl, write_json, write_jsonl
from harvest.storage.keys import image_key
from tests.helpers import process_elsewhere

POLICY = RetentionPolicy(kept_days=14, failed_days=30, grace=timedelta(hours=24))
URLS = ["https://one.example/", "https://two.example/"]
IMAGES = ["1", "2", "3", "4", "5"]
PAGES = ["https://shared.example/a", "https://shared.example/b", "https://shared.example/c"]
SEEDS = [11, 22, 33]
STEPS = 30


def _hash(line: dict[str, Any]) -> str:
    """The content hash of an activity: here its image changes its content."""
    return hashlib.sha256(f"{line['id']}|{line['uri']}".encode()).hexdigest()


class Model:
    def __init__(self, engine: Any, store: LocalStore, rng: random.Random) -> None:
        self.engine, self.store, self.rng = engine, store, rng
        self.clock = utcnow()
        self.log: list[str] = []

    # --- a run, step by step, as the flow does it ---------------------------------------------------

    def run(self) -> None:
        url = self.rng.choice(URLS)
        run_id = str(uuid.uuid4())
        try:
            run_rows.create_run(self.engine, run_id, url, {})
        except RunAlreadyRunningError:
            self.log.append(f"run {url}: busy")
            return
        run_rows.record_file(self.engine, run_id, write_jsonl(
            self.store, f"runs/{run_id}/raw_activities.jsonl", "raw_activities", [{"name": "A"}]))
        self._crawl_pages(run_id, url)
        names = [f"{URLS.index(url)}-{n}" for n in range(4)]
        for index, chunk in enumerate((names[:2], names[2:])):
            lines = [{"id": name, "uri": self._image()} for name in chunk]
            kind = f"images_map.part-{index:04d}"
            run_rows.record_file(self.engine, run_id, write_jsonl(
                self.store, f"runs/{run_id}/{kind}.jsonl", kind, lines))
            run_rows.record_step(self.engine, run_id, f"images.{index}", {"items_in": 2, "items_out": 2})
        ending = self.rng.random()
        if ending < 0.2:  # the process is killed: the row says running, on a host that is gone
            with self.engine.begin() as connection:
                connection.execute(scrape_runs.update().where(scrape_runs.c.id == run_id).values(
                    host="dead-host.example", pid=1, process=process_elsewhere(1)))
            self.log.append(f"run {run_id[:8]} killed")
            return
        if ending < 0.35:  # the flow failed after the image chunks: the failure hook keeps the files
            run_rows.finish_run(self.engine, run_id, "failed", retention="kept",
                                expires_at=self.clock + timedelta(days=POLICY.failed_days))
            self.log.append(f"run {run_id[:8]} failed")
            return
        self._finish(run_id, url)

    def _crawl_pages(self, run_id: str, url: str) -> None:
        """The crawl's page memory, as the crawl stage keeps it: each page fetched anew (remembered) or found
        unchanged (confirmed), owned by this run."""
        memory = PageCache(self.engine, "model", render="http", run_id=run_id)
        for page in [f"{url}page", *PAGES]:
            if self.rng.random() < 0.5 and memory.recall(page) is not None:
                memory.confirm(page)
            else:
                memory.remember(Remembered(url=page, page_url=page, final_url=page, validators=Validators('"v"', None),
                                           fetched_at=self.clock, activities=[{"name": "A"}]))
        memory.flush()

    def cleanup(self) -> None:
        """`harvest runs cleanup` of a finished run whose files are kept."""
        candidates = self._runs(status=("completed", "failed", "crashed"))
        if candidates:
            run_id = self.rng.choice(candidates)["id"]
            cleanup_run(self.engine, self.store, run_id)
            self.log.append(f"cleanup {run_id[:8]}")

    def _image(self) -> str | None:
        """An image the chunk stored or reused (content-addressed: an existing one is not rewritten), or a
        failed download."""
        if self.rng.random() < 0.2:
            return None
        key = image_key(self.rng.choice(IMAGES) * 64)
        if self.store.head(key) is None:
            write_json(self.store, key, "image", {"pixels": key})
        return self.store.uri_for(key)

    def _finish(self, run_id: str, url: str) -> None:
        images_map, _ = combine_parts(self.engine, self.store, run_id, "images_map", "images", 2)
        final = [
            {"id": line["id"], "name": f"Activity {line['id']}", "content_hash": _hash(line),
             "location": {"formatted_address": line["id"]}, "tags": [],
             "image": {"uri": line["uri"], "width": 1, "height": 1} if line["uri"] else None}
            for line in iter_jsonl(self.store, images_map.uri)
        ]
        final_ref = write_jsonl(self.store, f"runs/{run_id}/final.jsonl", "final_jsonl", final)
        run_rows.record_file(self.engine, run_id, final_ref)
        run_rows.record_file(self.engine, run_id, write_jsonl(
            self.store, digest_key(run_id), "digest", [{"id": r["id"]} for r in final]))
        auto_import = self.rng.random() < 0.5
        summary = import_final_records(self.store, run_id, final_ref, self.engine)[1] if auto_import else None
        run_rows.finish_run(self.engine, run_id, "completed",
                            import_summary=summary.model_dump() if summary else None)
        if auto_import:  # the completion hook
            cleanup_run(self.engine, self.store, run_id)
        else:
            run_rows.update_run(self.engine, run_id, retention="kept",
                                expires_at=self.clock + timedelta(days=POLICY.kept_days))
        self.log.append(f"run {run_id[:8]} completed{' and imported' if auto_import else ''}")

    # --- after the run ----------------------------------------------------------------------------------

    def _runs(self, *, status: tuple[str, ...]) -> list[dict[str, Any]]:
        with self.engine.begin() as connection:
            return [dict(r) for r in connection.execute(sa.select(scrape_runs).where(
                scrape_runs.c.status.in_(status), scrape_runs.c.retention.in_(FILES_KEPT))).mappings()]

    def resume(self) -> None:
        candidates = self._runs(status=("failed", "crashed"))
        if not candidates:
            return
        row = self.rng.choice(candidates)
        try:
            run_rows.create_run(self.engine, row["id"], row["url"], {})
        except RunAlreadyRunningError:
            return
        self._finish(row["id"], row["url"])
        self.log[-1] += " (resumed)"

    def manual_import(self) -> None:
        candidates = [r for r in self._runs(status=("completed",))
                      if "final_jsonl" in run_rows.files_view(self.engine, r["id"])]
        if candidates:
            run_id = self.rng.choice(candidates)["id"]
            import_kept_run(self.store, run_id, self.engine)
            self.log.append(f"import {run_id[:8]}")

    def sweep(self) -> None:
        self.clock += self.rng.choice([timedelta(0), timedelta(hours=2), timedelta(days=2), timedelta(days=15),
                                       timedelta(days=31)])
        report = sweep(self.engine, self.store, POLICY, flow_run_state=lambda _: None, now=self.clock)
        assert report.errors == []
        self.log.append(f"sweep: {len(report.expired)} expired, {len(report.images)} images, "
                        f"{len(report.reconciled)} reconciled")

    # --- the invariants ---------------------------------------------------------------------------------

    def check(self) -> None:
        def exists(uri: str) -> bool:
            return self.store.head(self.store.key_for(uri)) is not None

        with self.engine.begin() as connection:
            uris = [r.image_uri for r in connection.execute(
                sa.select(activities.c.image_uri).where(activities.c.image_uri.is_not(None)))]
            alive = [r.id for r in connection.execute(sa.select(scrape_runs.c.id).where(sa.or_(
                scrape_runs.c.retention.in_(FILES_KEPT), scrape_runs.c.status == "running")))]
            owners = {r.run_id for r in connection.execute(sa.select(page_cache.c.run_id))}
        kept_too_long = owners - set(alive)
        assert not kept_too_long, f"page memory of runs whose files are gone: {sorted(kept_too_long)}"
        lost = [uri for uri in uris if not exists(uri)]
        assert not lost, f"activities point at missing images {lost}"
        for run_id in alive:
            for kind, ref in run_rows.files_view(self.engine, run_id).items():
                assert exists(ref.uri), f"kept run {run_id} lost its {kind}"
                if kind.startswith("images_map") or kind == "final_jsonl":
                    for line in iter_jsonl(self.store, ref.uri):
                        uri = line.get("uri") or (line.get("image") or {}).get("uri")
                        assert not uri or exists(uri), f"{kind} of kept run {run_id} points at missing {uri}"


@pytest.mark.parametrize("seed", SEEDS)
def test_no_interleaving_loses_a_referenced_or_kept_file(clean_db: str, tmp_path, seed: int) -> None:  # noqa: ANN001
    model = Model(get_engine(clean_db), LocalStore(tmp_path / "store"), random.Random(seed))
    operations = [model.run, model.run, model.resume, model.manual_import, model.cleanup, model.sweep, model.sweep]
    for _ in range(STEPS):
        operation = model.rng.choice(operations)
        operation()
        try:
            model.check()
        except AssertionError as exc:
            raise AssertionError(f"{exc}\nafter:\n  " + "\n  ".join(model.log)) from None
    assert any(line.startswith("sweep") for line in model.log) and any("imported" in line for line in model.log)


# --- issue 27: the same kind of check over embeddings batches ----------------------------------------------


class BatchModel(Model):
    """Runs that embed through the real stage (submit, split into parts at a lowered request limit, collect) on the
    OpenAI stand-in: a run is killed after submitting (its batch recorded, never collected), fails after
    collecting, or completes with its files kept or cleaned up (auto-import)."""

    def __init__(self, engine: Any, store: LocalStore, rng: random.Random, client: Any) -> None:
        super().__init__(engine, store, rng)
        self.client = client

    def run(self) -> None:
        from harvest.enrich.embeddings.stage import collect_embeddings, submit_embeddings
        from harvest.models import Activity, Location

        url = self.rng.choice(URLS)
        run_id = str(uuid.uuid4())
        try:
            run_rows.create_run(self.engine, run_id, url, {"embedding_model": "text-embedding-3-small"})
        except RunAlreadyRunningError:
            self.log.append(f"run {url}: busy")
            return
        records = [Activity(id=f"{URLS.index(url)}-{n}", name=f"Park {n} {self.rng.random()}", content_hash=str(n),
                            location=Location(name=f"Reserve {n}", formattedAddress=f"{n} Main Rd"))
                   for n in range(5)]
        standardized = write_jsonl(self.store, f"runs/{run_id}/standardized.jsonl", "standardized", records)
        run_rows.record_file(self.engine, run_id, standardized)
        submitted, job, _ = submit_embeddings(self.store, run_id, standardized, self.client, "text-embedding-3-small",
                                              dimensions=8, max_requests=2)
        for ref in submitted.files:
            run_rows.record_file(self.engine, run_id, ref)
        run_rows.record_step(self.engine, run_id, "embeddings_submit", submitted.stats.model_dump())
        assert job is not None and len(job.parts) == 3, "5 lines at 2 a batch: three parts"
        ending = self.rng.random()
        if ending < 0.25:  # killed while the batches run: the row says running, on a host that is gone
            with self.engine.begin() as connection:
                connection.execute(scrape_runs.update().where(scrape_runs.c.id == run_id).values(
                    host="dead-host.example", pid=1, process=process_elsewhere(1)))
            self.log.append(f"run {run_id[:8]} killed with {len(job.parts)} batches out")
            return
        collected = collect_embeddings(self.store, run_id, standardized, self.client, job, dimensions=8)
        for ref in collected.files:
            run_rows.record_file(self.engine, run_id, ref)
        if ending < 0.4:
            run_rows.finish_run(self.engine, run_id, "failed", retention="kept",
                                expires_at=self.clock + timedelta(days=POLICY.failed_days))
            self.log.append(f"run {run_id[:8]} failed")
            return
        run_rows.finish_run(self.engine, run_id, "completed")
        if self.rng.random() < 0.5:
            cleanup_run(self.engine, self.store, run_id)
            self.log.append(f"run {run_id[:8]} completed and cleaned up")
        else:
            run_rows.update_run(self.engine, run_id, retention="kept",
                                expires_at=self.clock + timedelta(days=POLICY.kept_days))
            self.log.append(f"run {run_id[:8]} completed, kept")

    def check(self) -> None:
        """Kept and running runs keep every batch file and the record of every batch they submitted (a killed
        run's resume collects them); a run past its promise (expired, cleaned) has no object left."""
        from harvest.enrich.embeddings.resume import submitted_batch

        with self.engine.begin() as connection:
            runs = [dict(r) for r in connection.execute(sa.select(
                scrape_runs.c.id, scrape_runs.c.status, scrape_runs.c.retention)).mappings()]
        for run in runs:
            left = list(self.store.list(f"runs/{run['id']}/"))
            if run["retention"] in FILES_KEPT or run["status"] == "running":
                files = run_rows.files_view(self.engine, run["id"])
                for kind, ref in files.items():
                    assert self.store.head(self.store.key_for(ref.uri)), f"kept run {run['id']} lost its {kind}"
                inputs = [kind for kind in files if kind.startswith("embeddings_batch_input")]
                assert len(inputs) == 3, f"kept run {run['id']} has batch inputs {inputs}"
                if "embeddings" not in files:  # submitted, never collected: what a resume needs is there
                    batch = submitted_batch(self.engine, run["id"], "text-embedding-3-small")
                    assert batch is not None and len(batch.parts) == 3, f"run {run['id']} lost its batch record"
            else:
                assert not left, f"run {run['id']} ({run['status']}, {run['retention']}) kept {len(left)} objects"


@pytest.mark.parametrize("seed", SEEDS)
def test_batches_are_kept_while_promised_and_gone_after(clean_db: str, tmp_path, seed: int) -> None:  # noqa: ANN001
    import openai

    from testkit.openai_server import OpenAITestServer

    with OpenAITestServer(dimensions=8, polls_until_complete=1) as server:
        server.configure(max_batch_requests=2, finalizing_polls=0)
        client = openai.OpenAI(api_key="sk-test", base_url=server.base_url, max_retries=0)
        model = BatchModel(get_engine(clean_db), LocalStore(tmp_path / "store"), random.Random(seed), client)
        operations = [model.run, model.run, model.sweep, model.sweep]
        for _ in range(STEPS // 2):
            model.rng.choice(operations)()
            try:
                model.check()
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nafter:\n  " + "\n  ".join(model.log)) from None
        # Past every promise: two sweeps (reconcile, then expire) a long way ahead leave nothing of any run.
        for _ in range(2):
            model.clock += timedelta(days=POLICY.failed_days + 1)
            assert sweep(model.engine, model.store, POLICY, flow_run_state=lambda _: None, now=model.clock).errors == []
        model.check()
        assert server.stats().get("rejected.too_many_requests", 0) == 0
    assert list(model.store.list("runs/")) == [], "\n".join(model.log)
