"""The pipeline's stages over stored files: each reads references, streams records, writes files, and
returns a `StageResult` (references + counters). No Prefect here: `flows/` wraps each stage in a task."""

from harvest.stages.common import StageResult, StageStats
from harvest.storage.keys import run_key

__all__ = ["StageResult", "StageStats", "run_key"]
