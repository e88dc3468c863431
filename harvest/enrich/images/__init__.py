"""Images: download, verify, resize and store each activity's primary image (`images_map.jsonl`)."""
