"""Sources: the sites harvest keeps fresh on schedules, and how each one is doing (issue 32).

The rows are in harvest.db.sources; the cadence is a Prefect schedule (blocks/schedules.py); here is what does not
need Prefect: a cadence read from the command line (`cadence`), each source's health and the alarm (`health`).
"""
