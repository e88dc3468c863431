"""The enrich step: images, geocodes and embeddings of standardized activities, side by side.

One package per enrichment (images/, geocode/, embeddings/), each holding its client, its stage, its cache and
its cost pieces; fan_out.py sizes the chunks, concurrency.py runs a chunk's records in order, join.py joins a
map's chunk parts.
"""
