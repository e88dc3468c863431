"""Geocoding: each distinct address asked once, answers cached across runs (`geocoded_map.jsonl`)."""
