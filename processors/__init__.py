"""One pure core per job (scoring, feedback, media, schemas, trainer policy) and the thin
streaming shell that feeds them from Kafka. Imports only `streams`, `state` and `models`."""
