"""The log's own consumers (``manage.py forward``): each sink's forwarder and the run recorder.

- ``consumer.py``: what a consumer is (where it starts, how it decodes and commits a batch) and the loop
  that runs one: a lease, a prefetching reader, commits with retries and backoff, reports.
- ``sinks.py``: a sink's forwarder: the values of ``ok`` outcomes of its projects, committed with the
  consumer offset in the sink database; refused executions go to the quarantine.
- ``runs.py``: the run recorder: every outcome as a GroupRun and GroupStats counters, committed with its
  offset in the Django database (``streams.models.ConsumerOffset``).
- ``process.py``: the process that runs them all and keeps them in step with the sinks configured.

docs/streams.md says how they fit together and what each guarantees.
"""
