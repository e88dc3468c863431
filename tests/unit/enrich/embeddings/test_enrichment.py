"""The embeddings enrichment reads a submission persisted before its class moved (harvest/stages/embed.py until
issue 30): Prefect's JSON serializer stores a model with its class's dotted path and, when that path no longer
imports, hands back the stored dict; the resumed run must still collect the batch it paid for."""

from __future__ import annotations

from prefect.serializers import JSONSerializer

from harvest.enrich.embeddings.enrichment import EMBEDDINGS
from harvest.enrich.embeddings.stage import SubmittedBatch


def test_a_submission_stored_under_its_old_class_path_is_read_by_its_data() -> None:
    submitted = SubmittedBatch(batch_id="batch_1", input_file_id="file_1", records=12, model="m",
                               prefill_uri="s3://b/runs/r/embeddings_prefill.npy", reserved_usd=0.25)
    serializer = JSONSerializer()
    stored = serializer.dumps(submitted).replace(
        b"harvest.enrich.embeddings.stage.SubmittedBatch", b"harvest.stages.embed.SubmittedBatch"
    )
    assert b"harvest.stages.embed.SubmittedBatch" in stored, "the serializer stores the class path"

    loaded = serializer.loads(stored)

    assert isinstance(loaded, dict), "Prefect hands back the dict when the stored class path does not import"
    assert EMBEDDINGS.job_from(loaded) == submitted
    assert EMBEDDINGS.job_from(submitted) is submitted and EMBEDDINGS.job_from(None) is None
