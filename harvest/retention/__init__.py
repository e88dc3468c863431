"""Retention: what happens to a run's files (the policy, the sweep, cleanups) and the queries behind it."""
