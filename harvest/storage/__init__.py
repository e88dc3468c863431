"""Object storage for run files: one small contract (`ObjectStore`), a local-folder back end and an S3 back end.

- base.py: the contract every caller relies on (`ObjectStore`, `Upload`, `ObjectInfo`);
- local.py, s3.py: the two back ends; factory.py: `open_store` from a storage URL;
- files.py: streaming whole files in and out (JSON Lines, JSON, binary arrays);
- keys.py: the object-key layout (`runs/<id>/…`, `digests/…`, `images/…`).
"""

from harvest.storage.base import ObjectInfo, ObjectStore, Upload, WholeFileUpload
from harvest.storage.factory import open_store
from harvest.storage.files import (
    JsonlPicker,
    concat_files,
    delete_prefix,
    iter_jsonl,
    read_json,
    staged_file,
    store_local_file,
    write_json,
    write_json_lines,
    write_jsonl,
)
from harvest.storage.keys import run_prefix
from harvest.storage.local import LocalStore
from harvest.storage.s3 import PART_BYTES, FollowingUpload, S3Store, make_s3_client

__all__ = [
    "JsonlPicker",
    "PART_BYTES",
    "FollowingUpload",
    "LocalStore",
    "ObjectInfo",
    "ObjectStore",
    "S3Store",
    "Upload",
    "WholeFileUpload",
    "concat_files",
    "delete_prefix",
    "iter_jsonl",
    "make_s3_client",
    "open_store",
    "read_json",
    "run_prefix",
    "staged_file",
    "store_local_file",
    "write_json",
    "write_json_lines",
    "write_jsonl",
]
