"""Event types, codec, validation limits and the topic catalog. Imports nothing of ours."""
