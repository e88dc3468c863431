"""harvest.enrich.embeddings.batch driven through the real openai SDK against the local OpenAI wire-protocol server:
batch input, submit, poll, stream results, the sync endpoint, and the float32 .npy matrix."""

from __future__ import annotations

import io
import json
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import openai
import pytest
from numpy.lib.format import open_memmap

from harvest.enrich.embeddings.api import embedding_text
from harvest.enrich.embeddings.batch import (
    BatchResult,
    check_batch,
    iter_batch_results,
    run_batches,
    submit_batch,
    write_batch_input,
)
from harvest.enrich.embeddings.matrix import EmbeddingMatrix, EmbeddingStream
from harvest.enrich.embeddings.sync import embed_texts
from harvest.errors import BatchNotReadyError, ConfigError, EmbeddingError
from harvest.models import Activity, Location
from harvest.net.openai_client import make_openai_client
from testkit.openai_server import OpenAITestServer, embedding_vector

DIMS = 32
MODEL = "text-embedding-3-small"


@pytest.fixture
def oai() -> Iterator[OpenAITestServer]:
    with OpenAITestServer(dimensions=DIMS, polls_until_complete=2) as server:
        yield server


@pytest.fixture
def client(oai: OpenAITestServer) -> openai.OpenAI:
    return make_openai_client("sk-test", oai.base_url, max_retries=3, timeout_s=10)


def missing_rows(matrix: np.ndarray) -> np.ndarray:
    """Rows with no vector: NaN rows, as EmbeddingMatrix writes them."""
    return np.isnan(matrix[:, 0]) if matrix.shape[0] else np.zeros(0, dtype=bool)


def read_embeddings(path: Path) -> np.ndarray:
    """The stored matrix as numpy reads it back (memory-mapped, read-only)."""
    return np.load(Path(path), mmap_mode="r")


def activity(n: int, **overrides: object) -> Activity:
    fields: dict = {
        "id": f"act{n:04d}", "name": f"Playground {n}", "description": f"Swings and slides number {n}.",
        "location": Location(name=f"Reserve {n}", formattedAddress=f"{n} Main Rd, Eltham VIC 3095, Australia"),
        "tags": ["park", "playground"], "content_hash": f"h{n}", **overrides,
    }
    return Activity(**fields)


def batch_file(tmp_path: Path, activities: list[Activity]) -> Path:
    path = tmp_path / "input.jsonl"
    with path.open("wb") as out:
        write_batch_input(activities, MODEL, out)
    return path


def poll_until_done(client: openai.OpenAI, batch_id: str, polls: int = 5) -> BatchResult:
    for _ in range(polls):
        try:
            return check_batch(client, batch_id)
        except BatchNotReadyError:
            continue
    raise AssertionError(f"batch {batch_id} never finished")


# -- input -----------------------------------------------------------------------------------------------

def test_embedding_text_joins_the_parts_that_exist_and_is_bounded() -> None:
    assert embedding_text(activity(1)) == (
        "Playground 1 | Swings and slides number 1. | 1 Main Rd, Eltham VIC 3095, Australia | park, playground")
    bare = activity(2, description=None, location=Location(), tags=[])
    assert embedding_text(bare) == "Playground 2"
    messy = activity(3, description="  lots\n\n of   space ", tags=[" a ", "", "b"])
    assert " lots of space " in embedding_text(messy) and embedding_text(messy).endswith("| a, b")
    assert len(embedding_text(activity(4, description="x" * 50_000))) == 8_000


def test_write_batch_input_writes_one_request_per_activity() -> None:
    out = io.BytesIO()
    acts = [activity(1), activity(2), activity(1), activity(3, name="  ", description=None, location=Location(),
                                                               tags=[])]
    assert write_batch_input(acts, MODEL, out) == 2  # duplicate id and empty text skipped
    lines = [json.loads(line) for line in out.getvalue().splitlines()]
    assert lines[0] == {"custom_id": "act0001", "method": "POST", "url": "/v1/embeddings",
                        "body": {"model": MODEL, "input": embedding_text(activity(1))}}
    assert [line["custom_id"] for line in lines] == ["act0001", "act0002"]


def test_write_batch_input_max_lines_continues_from_the_same_iterator() -> None:
    remaining = iter([activity(n) for n in range(5)])
    sizes = []
    while True:
        out = io.BytesIO()
        written = write_batch_input(remaining, MODEL, out, max_lines=2)
        if not written:
            break
        sizes.append(written)
    assert sizes == [2, 2, 1]


# -- batch life cycle ------------------------------------------------------------------------------------

def test_batch_happy_path_gives_each_activity_its_deterministic_vector(
    tmp_path: Path, client: openai.OpenAI, oai: OpenAITestServer
) -> None:
    acts = [activity(n) for n in range(5)]
    handle = submit_batch(client, batch_file(tmp_path, acts), metadata={"harvest_run_id": "run-1"})
    assert oai.file_content(handle.input_file_id) == (tmp_path / "input.jsonl").read_bytes()
    with pytest.raises(BatchNotReadyError, match="finalizing"):
        check_batch(client, handle.batch_id)
    result = check_batch(client, handle.batch_id)
    assert result.status == "completed" and result.error_file_id is None
    assert result.request_counts == {"total": 5, "completed": 5, "failed": 0}
    rows = sorted(iter_batch_results(client, result, dimensions=DIMS), key=lambda r: r.custom_id or "")
    acts = sorted(acts, key=lambda a: a.id)  # the output file is in no particular order, like the API's
    assert [r.custom_id for r in rows] == [a.id for a in acts]
    for row, act in zip(rows, acts, strict=True):
        assert row.error is None and row.vector is not None and row.vector.dtype == np.float32
        assert np.array_equal(row.vector, embedding_vector(embedding_text(act), DIMS))
    # Same text through the synchronous endpoint: the same vector.
    [sync] = embed_texts(client, [embedding_text(acts[0])], model=MODEL, dimensions=DIMS)
    assert np.array_equal(sync, rows[0].vector)


def test_upload_and_create_survive_429_and_500(tmp_path: Path, client: openai.OpenAI, oai: OpenAITestServer) -> None:
    oai.fail_next("/v1/files", 1, status=429, retry_after=0.02)
    oai.fail_next("/v1/batches", 1, status=500, retry_after=0.02)
    handle = submit_batch(client, batch_file(tmp_path, [activity(1)]), metadata={})
    assert handle.batch_id.startswith("batch_")
    stats = oai.stats()
    assert stats["files.create"] == 2 and stats["batches.create"] == 2
    assert stats["injected.429"] == 1 and stats["injected.500"] == 1


def test_per_line_errors_and_wrong_dimensions_are_rows_not_exceptions(
    tmp_path: Path, client: openai.OpenAI, oai: OpenAITestServer
) -> None:
    acts = [activity(n) for n in range(4)]
    oai.configure(error_ids=["act0001"], wrong_dimension_ids=["act0002"])
    handle = submit_batch(client, batch_file(tmp_path, acts), metadata={})
    result = poll_until_done(client, handle.batch_id)
    assert result.error_file_id is not None
    rows = {r.custom_id: r for r in iter_batch_results(client, result, dimensions=DIMS)}
    assert set(rows) == {a.id for a in acts}
    assert rows["act0000"].vector is not None and rows["act0003"].vector is not None
    assert rows["act0001"].vector is None and rows["act0001"].error.startswith("HTTP 500")
    assert rows["act0002"].vector is None and rows["act0002"].error == f"wrong dimension {DIMS // 2} (expected {DIMS})"


def test_unreadable_lines_in_an_output_file_do_not_stop_the_stream(client: openai.OpenAI) -> None:
    good = {"id": "r1", "custom_id": "a", "error": None, "response": {"status_code": 200, "request_id": "q",
            "body": {"object": "list", "data": [{"object": "embedding", "index": 0,
                                                 "embedding": embedding_vector("a", DIMS).tolist()}]}}}
    expired = {"id": "r2", "custom_id": "b", "response": None,
               "error": {"code": "batch_expired", "message": "not run in time"}}
    nan = {**good, "custom_id": "c", "response": {"status_code": 200, "body": {"data": [
        {"embedding": [float("nan")] * DIMS}]}}}
    content = "\n".join([json.dumps(good), "{truncated", json.dumps({"no": "id"}), json.dumps(expired),
                         json.dumps(nan), ""]).encode()
    uploaded = client.files.create(file=("out.jsonl", content), purpose="batch")
    result = BatchResult(batch_id="b", status="completed", output_file_id=uploaded.id, error_file_id=None)
    rows = list(iter_batch_results(client, result, dimensions=DIMS))
    assert [r.custom_id for r in rows] == ["a", None, None, "b", "c"]
    assert rows[0].vector is not None and rows[0].error is None
    assert rows[1].error.startswith("line 2: unreadable") and rows[2].error.startswith("line 3")
    assert rows[3].error == "batch_expired: not run in time"
    assert rows[4].error == "vector has non-finite values"


@pytest.mark.parametrize("outcome", ["failed", "expired", "cancelled"])
def test_bad_batch_outcomes_raise_embedding_error(
    tmp_path: Path, client: openai.OpenAI, oai: OpenAITestServer, outcome: str
) -> None:
    oai.configure(batch_outcome=outcome, polls_until_complete=1)
    handle = submit_batch(client, batch_file(tmp_path, [activity(1)]), metadata={})
    with pytest.raises(EmbeddingError) as caught:
        check_batch(client, handle.batch_id)
    assert not isinstance(caught.value, BatchNotReadyError)
    assert f"ended {outcome}" in str(caught.value) and handle.batch_id in str(caught.value)
    if outcome == "failed":
        assert "testkit_injected_failure" in str(caught.value)


def test_cancelling_is_not_ready_then_cancelled_is_an_error(tmp_path: Path, client: openai.OpenAI) -> None:
    handle = submit_batch(client, batch_file(tmp_path, [activity(1)]), metadata={})
    client.batches.cancel(handle.batch_id)
    with pytest.raises(BatchNotReadyError, match="cancelling"):
        check_batch(client, handle.batch_id)
    with pytest.raises(EmbeddingError, match="cancelled"):
        check_batch(client, handle.batch_id)


def test_failed_validation_names_the_lines(tmp_path: Path, client: openai.OpenAI, oai: OpenAITestServer) -> None:
    path = tmp_path / "broken.jsonl"
    path.write_bytes(batch_file(tmp_path, [activity(1)]).read_bytes() + b"{oops\n")
    oai.configure(polls_until_complete=1)
    handle = submit_batch(client, path, metadata={})
    with pytest.raises(EmbeddingError, match=r"line 2: invalid_json_line"):
        check_batch(client, handle.batch_id)


def test_submit_and_check_turn_api_failures_into_embedding_errors(
    tmp_path: Path, client: openai.OpenAI, oai: OpenAITestServer
) -> None:
    empty = tmp_path / "empty.jsonl"
    empty.write_bytes(b"")
    with pytest.raises(EmbeddingError, match="empty"):
        submit_batch(client, empty, metadata={})
    with pytest.raises(EmbeddingError, match="HTTP 404"):
        check_batch(client, "batch_does_not_exist")
    oai.fail_next("/v1/batches", 10, status=500, retry_after=0.01)
    impatient = make_openai_client("sk-test", oai.base_url, max_retries=1, timeout_s=5)
    with pytest.raises(EmbeddingError, match="HTTP 500"):
        submit_batch(impatient, batch_file(tmp_path, [activity(1)]), metadata={})
    # The uploaded input file was cleaned up after the batch could not be created.
    assert oai.stats()["files.delete"] == 1 and list(client.files.list()) == []


def test_run_batches_pages_back_to_the_runs_batches_and_stops_at_the_run_start(
    tmp_path: Path, client: openai.OpenAI, oai: OpenAITestServer
) -> None:
    """The batches of the run that a killed attempt never recorded are found by their metadata, through more than
    one page of newer batches (the API lists 100 at most a page), whatever their status (the stage decides)."""
    path = batch_file(tmp_path, [activity(1)])
    started = time.time() - 1
    live = submit_batch(client, path, metadata={"harvest_run_id": "run-a"})
    oai.configure(batch_outcome="failed", polls_until_complete=1)
    failed = submit_batch(client, path, metadata={"harvest_run_id": "run-a"})  # newer, ended badly
    with pytest.raises(EmbeddingError):
        check_batch(client, failed.batch_id)
    oai.configure(batch_outcome="completed")
    shared = live.input_file_id  # other runs' batches: one create each on an uploaded file (105 uploads took ~6 s)
    for n in range(105):
        client.batches.create(input_file_id=shared, endpoint="/v1/embeddings", completion_window="24h",
                              metadata={"harvest_run_id": f"other-{n}"})
    listed = oai.stats().get("batches.list", 0)

    found = run_batches(client, "run-a", since=started - 60)
    assert [(b.id, b.status) for b in found] == [(failed.batch_id, "failed"), (live.batch_id, "validating")]
    assert oai.stats()["batches.list"] - listed == 2  # two pages: 100, then the rest
    assert run_batches(client, "run-b", since=started - 60) == []
    assert run_batches(client, "run-a", since=time.time() + 60) == []  # all older than the run: first page only
    oai.fail_next("/v1/batches", 10, status=500, retry_after=0.01)
    impatient = make_openai_client("sk-test", oai.base_url, max_retries=1, timeout_s=5)
    assert run_batches(impatient, "run-a", since=started) == []  # a failed lookup: the caller submits


def test_a_refused_key_is_an_embedding_error() -> None:
    with OpenAITestServer(dimensions=DIMS, api_key="the-right-key") as strict:
        wrong = make_openai_client("the-wrong-key", strict.base_url, max_retries=0)
        with pytest.raises(EmbeddingError, match="HTTP 401"):
            embed_texts(wrong, ["x"], model=MODEL, dimensions=DIMS)
        with pytest.raises(EmbeddingError, match="HTTP 401"):
            check_batch(wrong, "batch_x")


# -- sync endpoint ---------------------------------------------------------------------------------------

def test_embed_texts_chunks_and_keeps_order(client: openai.OpenAI, oai: OpenAITestServer) -> None:
    texts = [f"activity text {n}" for n in range(600)]
    vectors = embed_texts(client, texts, model=MODEL, dimensions=DIMS)
    assert len(vectors) == 600 and oai.stats()["embeddings"] == 3  # 256 + 256 + 88
    assert oai.stats()["embeddings.inputs"] == 600
    for n in (0, 255, 256, 599):
        assert np.array_equal(vectors[n], embedding_vector(texts[n], DIMS))
    assert embed_texts(client, [], model=MODEL, dimensions=DIMS) == []


def test_embed_texts_survives_429_then_500(client: openai.OpenAI, oai: OpenAITestServer) -> None:
    oai.fail_next("/v1/embeddings", 1, status=429, retry_after=0.02)
    oai.fail_next("/v1/embeddings", 1, status=500, retry_after=0.02)
    [vector] = embed_texts(client, ["hello"], model=MODEL, dimensions=DIMS)
    assert np.array_equal(vector, embedding_vector("hello", DIMS))
    assert oai.stats()["embeddings"] == 3


def test_a_dripping_api_is_cut_at_the_per_request_deadline(oai: OpenAITestServer) -> None:
    # The whole answer, headers included, one byte every 0.05 s (a ~500-byte answer: ~25 s a request);
    # no single read waits near the 0.5 s timeout, so only the total deadline per request ends it.
    # Bound: 2 requests (1 SDK retry) x 0.5 s, plus the SDK's backoff (under 1 s); the cap is generous, since
    # without the deadline each request would take the drip's ~25 s.
    oai.configure(drip_s=0.05, delay_path="/v1/embeddings")
    client = make_openai_client("sk-test", oai.base_url, max_retries=1, timeout_s=0.5)
    started = time.monotonic()
    with pytest.raises(EmbeddingError, match="(?i)timed? ?out"):
        embed_texts(client, ["hello"], model=MODEL, dimensions=DIMS)
    elapsed = time.monotonic() - started
    assert oai.stats()["dripped"] == 2
    assert 1.0 <= elapsed < 15, elapsed


def test_a_batch_file_download_gets_its_own_30_minute_deadline(oai: OpenAITestServer) -> None:
    """Batch output files (`/files/{id}/content`) can be hundreds of MB: their download is bounded by 30 minutes
    (docs/reliability.md), not by the request deadline. Both the file's metadata and its content drip here, each
    taking ~2 s against a 0.5 s request deadline: the metadata request is cut, the download completes."""
    import inspect

    client = make_openai_client("sk-test", oai.base_url, max_retries=0, timeout_s=0.5)
    stored = client.files.create(file=("out.jsonl", b'{"n": 1}\n'), purpose="batch")
    oai.configure(drip_s=0.01, delay_path="/v1/files/")  # headers and body, one byte every 10 ms

    with pytest.raises(openai.APITimeoutError):
        client.files.retrieve(stored.id)  # an ordinary request: the 0.5 s deadline
    assert client.files.content(stored.id).text == '{"n": 1}\n'  # a download: its own, longer deadline
    assert oai.stats()["dripped"] == 2
    # The download's bound itself cannot be waited out in a test; its default is the documented one.
    assert inspect.signature(make_openai_client).parameters["download_timeout_s"].default == 30 * 60


def test_embed_texts_refuses_wrong_dimensions_and_empty_text(client: openai.OpenAI) -> None:
    # ada-002 takes no `dimensions` parameter, so the server answers its default size (32), not 64.
    with pytest.raises(EmbeddingError, match="wrong dimension 32 \\(expected 64\\)"):
        embed_texts(client, ["x"], model="text-embedding-ada-002", dimensions=64)
    with pytest.raises(EmbeddingError, match="text 1 is empty"):
        embed_texts(client, ["x", "  "], model=MODEL, dimensions=DIMS)


def test_make_openai_client_validates() -> None:
    with pytest.raises(ConfigError):
        make_openai_client("", None)
    with pytest.raises(ConfigError):
        make_openai_client("k", "ftp://example.org")
    made = make_openai_client("k", "http://127.0.0.1:1/v1", max_retries=2, timeout_s=3)
    assert made.max_retries == 2 and str(made.base_url) == "http://127.0.0.1:1/v1/"


# -- matrix ----------------------------------------------------------------------------------------------

def test_matrix_stores_float32_rows_and_flags_missing_ones_as_nan(tmp_path: Path) -> None:
    path = tmp_path / "embeddings.npy"
    with EmbeddingMatrix(path, rows=4, dimensions=DIMS) as matrix:
        matrix.write(0, embedding_vector("a", DIMS))
        matrix.write(2, embedding_vector("c", DIMS))
        with pytest.raises(ValueError, match="wrong dimension"):
            matrix.write(1, np.zeros(DIMS + 1, dtype=np.float32))
        with pytest.raises(ValueError, match="non-finite"):
            matrix.write(1, np.full(DIMS, np.inf, dtype=np.float32))
        with pytest.raises(IndexError):
            matrix.write(4, embedding_vector("d", DIMS))
    loaded = read_embeddings(path)
    assert isinstance(loaded, np.memmap) and loaded.dtype == np.float32 and loaded.shape == (4, DIMS)
    assert missing_rows(loaded).tolist() == [False, True, False, True]
    assert np.array_equal(loaded[2], embedding_vector("c", DIMS))
    header = path.stat().st_size - 4 * DIMS * 4
    assert 0 < header <= 128  # the .npy header; the rest is exactly 4 bytes × dimensions per activity


def test_matrix_write_rows_from_a_real_batch(tmp_path: Path, client: openai.OpenAI, oai: OpenAITestServer) -> None:
    acts = [activity(n) for n in range(3)]
    oai.configure(error_ids=["act0001"])
    handle = submit_batch(client, batch_file(tmp_path, acts), metadata={})
    result = poll_until_done(client, handle.batch_id)
    row_of = {a.id: row for row, a in enumerate(acts)}
    with EmbeddingMatrix(tmp_path / "m.npy", rows=len(acts), dimensions=DIMS) as matrix:
        failures = matrix.write_rows(iter_batch_results(client, result, dimensions=DIMS), row_of)
        assert matrix.written == 2
    assert list(failures) == ["act0001"] and failures["act0001"].startswith("HTTP 500")
    loaded = read_embeddings(tmp_path / "m.npy")
    assert missing_rows(loaded).tolist() == [False, True, False]
    assert np.array_equal(loaded[2], embedding_vector(embedding_text(acts[2]), DIMS))
    with EmbeddingMatrix(tmp_path / "empty.npy", rows=0, dimensions=DIMS):
        pass
    assert missing_rows(read_embeddings(tmp_path / "empty.npy")).shape == (0,)


def test_matrix_file_is_the_same_npy_a_memory_map_writes(tmp_path: Path) -> None:
    """Positioned writes, no map: byte for byte the file `open_memmap` would have made."""
    rng = np.random.default_rng(1)
    vectors = rng.standard_normal((50, DIMS)).astype(np.float32)
    reference = open_memmap(tmp_path / "ref.npy", mode="w+", dtype="<f4", shape=(50, DIMS))
    reference[:] = np.nan
    with EmbeddingMatrix(tmp_path / "m.npy", rows=50, dimensions=DIMS, fill_chunk_rows=7) as matrix:
        for row in range(49, -1, -3):  # out of order, as batch output lines come
            matrix.write(row, vectors[row])
            reference[row] = vectors[row]
        missing = matrix.missing
    reference.flush()
    del reference
    assert (tmp_path / "m.npy").read_bytes() == (tmp_path / "ref.npy").read_bytes()
    assert missing.tolist() == missing_rows(read_embeddings(tmp_path / "m.npy")).tolist()



def test_write_many_is_write_for_a_batch_and_says_which_vectors_it_refused(tmp_path: Path) -> None:
    """Stored vectors are written a batch at a time: the same file as one `write` per row, and a refused vector
    (wrong length, non-finite, no such row) names its place in the batch while the others are written."""
    vectors = np.random.default_rng(5).normal(size=(12, DIMS)).astype(np.float32)
    with EmbeddingMatrix(tmp_path / "one.npy", rows=12, dimensions=DIMS) as one:
        for row in (7, 2, 3, 4, 11):
            one.write(row, vectors[row])
    broken = vectors[5].copy()
    broken[0] = np.nan
    batch = [(7, vectors[7]), (2, vectors[2].tolist()), (5, broken), (3, vectors[3]), (9, vectors[9][:3]),
             (4, vectors[4]), (12, vectors[0]), (11, vectors[11])]
    with EmbeddingMatrix(tmp_path / "many.npy", rows=12, dimensions=DIMS) as many:
        refused = many.write_many(batch)
        assert many.written == 5
    assert sorted(refused) == [2, 4, 6]
    assert "non-finite" in refused[2] and "wrong dimension" in refused[4] and "outside" in refused[6]
    assert (tmp_path / "many.npy").read_bytes() == (tmp_path / "one.npy").read_bytes()


class _Trickle(io.RawIOBase):
    """A stream that hands over at most 1,000 bytes per read, as a socket may."""

    def __init__(self, data: bytes) -> None:
        self._data = io.BytesIO(data)

    def readable(self) -> bool:
        return True

    def read(self, size: int = -1) -> bytes:
        return self._data.read(min(size, 1000) if size >= 0 else 1000)


def test_an_embedding_stream_reads_rows_forward_from_a_trickling_stream(tmp_path: Path) -> None:
    """The final writer reads the stored matrix as it downloads: rows come in order, whatever size the pieces."""
    vectors = np.random.default_rng(7).normal(size=(30, DIMS)).astype(np.float32)
    with EmbeddingMatrix(tmp_path / "m.npy", rows=30, dimensions=DIMS) as matrix:
        for row in range(0, 30, 2):
            matrix.write(row, vectors[row])
    data = (tmp_path / "m.npy").read_bytes()
    loaded = read_embeddings(tmp_path / "m.npy")
    with EmbeddingStream(_Trickle(data), chunk_rows=4) as rows:
        assert (rows.rows, rows.dimensions) == (30, DIMS)
        for row in [0, 0, 1, 5, 6, 17, 29]:
            assert np.array_equal(rows.row(row), loaded[row], equal_nan=True)
        with pytest.raises(ValueError, match="forward only"):
            rows.row(3)
        with pytest.raises(IndexError):
            rows.row(30)
    with EmbeddingStream(io.BytesIO(data[:-10]), chunk_rows=4) as rows, pytest.raises(ValueError, match="truncated"):
        rows.row(29)
    np.save(tmp_path / "f8.npy", np.zeros((2, 2)))
    with pytest.raises(ValueError, match="float32"):
        EmbeddingStream(io.BytesIO((tmp_path / "f8.npy").read_bytes()))


@pytest.mark.parametrize("outcome", ["expired", "cancelled"])
def test_a_batch_that_ends_part_way_keeps_the_vectors_it_finished(
    tmp_path: Path, client: openai.OpenAI, oai: OpenAITestServer, outcome: str
) -> None:
    """The API delivers the lines an expired or cancelled batch finished in its output file: paid for, kept."""
    oai.configure(batch_outcome=outcome, completed_before_end=2, polls_until_complete=1)
    acts = [activity(n) for n in range(4)]
    handle = submit_batch(client, batch_file(tmp_path, acts), metadata={})
    result = check_batch(client, handle.batch_id)
    assert result.status == outcome and result.request_counts == {"total": 4, "completed": 2, "failed": 2}
    rows = {row.custom_id: row for row in iter_batch_results(client, result, dimensions=DIMS)}
    assert set(rows) == {a.id for a in acts}
    for act in acts[:2]:  # the input file's first lines are the ones finished before the end
        vector = rows[act.id].vector
        assert vector is not None and np.array_equal(vector, embedding_vector(embedding_text(act), DIMS))
    assert {rows[a.id].error.split(":")[0] for a in acts[2:]} == {f"batch_{outcome}"}


def test_a_request_rate_window_is_waited_out_and_every_vector_arrives(client: openai.OpenAI, oai: OpenAITestServer) -> None:
    """The stand-in answers 429 with Retry-After once 2 requests were made in its 0.3 s window: the small
    chunks below make 4 requests, so at least one is refused and retried, and no vector is lost."""
    oai.configure(rate_limit_requests=2, rate_limit_window_s=0.3)
    texts = [f"text number {n}" for n in range(8)]
    vectors = embed_texts(client, texts, model=MODEL, dimensions=DIMS, chunk_size=2)
    assert oai.stats()["rate_limited"] >= 1 and oai.stats()["embeddings"] >= 5
    assert all(np.array_equal(v, embedding_vector(t, DIMS)) for v, t in zip(vectors, texts, strict=True))
