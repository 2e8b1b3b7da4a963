"""Sweeps on a Ray cluster: one engine per worker, one transcript store on the driver.

Each worker is a Ray async actor that owns one engine (started once), a temporary transcript store and
checkpoint database of its own, and a ``DebateRunner``. It runs many debates at once (``max_concurrency``)
so its engine batches their requests, as the local executor does on one machine. A worker runs one
``SweepJob`` (sent as JSON) and returns the finished debate as a bundle (``TranscriptStore.export_bundle``);
the driver imports each bundle into the one store the moment it arrives, in one transaction, so a killed
driver loses only the debates that were in flight.

Exactly once, as in ``executor.py``: debates finished in the store are skipped. A debate that was in flight
in an earlier run (local or on Ray) re-runs from its start on a worker, because its checkpoints are on
another machine or in a temporary folder that is gone; its import then overwrites the partial rows the
earlier run left (turns are keyed by index, and the new run writes every index). Engine errors and dead
workers (Ray restarts them, ``max_restarts``) are retried with exponential backoff up to the sweep's
``retries``, the debate resubmitted to whichever live worker is free (one that ran an earlier attempt resumes
it from its own checkpoint; any other starts it afresh); other errors fail the debate at once. Tokens are
counted from each imported bundle's turns, so the token budget is checked per finished debate rather than
per turn; reaching either budget cancels the debates in flight at once (unlike the local executor's stop
between turns, nothing of theirs would be kept: their partial rows stay on the workers), and ``--resume``
runs them again.

A worker needs only bonsai (and its engine's extra) installed. The driver pins every seat's adapter folder
before anything runs, and ships the files of the folders through the object store; a worker that does not
have a folder at the same path, with the same content, writes it under its own cache and rewrites the
job's paths. That changes nothing the engines see: an adapter's name is its content hash (see
``bonsai.registry.identity.inspect_adapter``), and the debate's stored settings are put back to the
driver's paths on import. Custom format files and the driver's persona book travel with each worker's
set-up. The embedded base model is prepared by a worker that lacks it; any other base must exist at the

One module a job: ``worker`` (the Ray actor on each node), ``cluster`` (connecting to Ray and shutting
the workers down), ``dispatch`` (sending jobs to workers, retries and budgets; Ray-free) and ``driver``
(``run_on_ray``, which sets the rest up). The bookkeeping shared with the local executor is in
``bonsai.sweep.ledger``.
"""
