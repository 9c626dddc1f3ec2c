"""The error-schema cache: online distillation of where the model errs (``cache``), with its
config, vocabulary, selection, shift screen, kernels with their numpy reference and snapshot.

Public names: :class:`SchemaCache` (snapshot/restore per
:class:`reloop.state.snapshots.Snapshottable`) with its :class:`SchemaCacheConfig`, the
:class:`Schema` records and :class:`SchemaChange` events it emits, the scoring path's
:class:`SchemaMatcher`, and :func:`schema_id_of`.

>>> from reloop.state.schemas import SchemaCache, SchemaCacheConfig
>>> SchemaCache(SchemaCacheConfig()).schemas()
[]
"""

from reloop.state.schemas.cache import (Schema, SchemaCache, SchemaCacheConfig, SchemaChange, SchemaMatcher,
                                        schema_id_of)

__all__ = ["Schema", "SchemaCache", "SchemaCacheConfig", "SchemaChange", "SchemaMatcher", "schema_id_of"]
