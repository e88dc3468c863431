"""The registry: what it lists by default, what it refuses to plug in, and a plug-in's column in the import."""

from __future__ import annotations

import pytest
import sqlalchemy as sa

from harvest.db.schema import activities
from harvest.enrich import registry
from harvest.enrich.base import ChunkedEnrichment, Enrichment
from harvest.import_.policy import import_table


class Colour(ChunkedEnrichment):
    name = "colour"
    map_kind = "colour_map"
    merged_key = "colour"
    columns = (sa.Column("colour", sa.Text),)


def test_the_default_enrichments_in_order() -> None:
    assert [e.name for e in registry.enrichments()] == ["images", "geocode", "embeddings"]
    assert [e.name for e in registry.chunked()] == ["images", "geocode"]
    assert [e.name for e in registry.batched()] == ["embeddings"]
    assert registry.vectors() is registry.enrichment("embeddings")


def test_a_plug_in_is_added_after_the_others_and_removed_again() -> None:
    registry.register(Colour())
    try:
        assert [e.name for e in registry.enrichments()][-1] == "colour"
        with pytest.raises(ValueError, match="registered already"):
            registry.register(Colour())
        table = import_table(registry.enrichments())
        assert "colour" in table.columns and "colour" not in activities.c, "its column is the import's, not the schema's"
        assert table.groups[-1].key == "colour" and "colour" in table.updatable
    finally:
        registry.unregister("colour")
    assert "colour" not in [e.name for e in registry.enrichments()]
    assert import_table(registry.enrichments()).table is activities


def test_an_enrichment_of_neither_shape_is_refused() -> None:
    class Shapeless(Enrichment):
        name = "shapeless"
        map_kind = "shapeless_map"
        merged_key = "shapeless"

    with pytest.raises(TypeError, match="neither"):
        registry.register(Shapeless())
