"""The durable log between acquisition and storage (issue 12); see streams/log.py and docs/streams.md."""
