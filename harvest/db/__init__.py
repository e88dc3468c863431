"""The metadata database: run records, run files and the activities table."""
