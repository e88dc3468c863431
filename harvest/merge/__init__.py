"""The merge and final steps: the enrichment maps joined into each activity, then the final records."""
