"""The diff step: what changed since the previous run of the same URL, from the two runs' digests."""
