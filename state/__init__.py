"""The memories: error memory, media memory, schema cache, snapshots. Imports only `streams`."""
