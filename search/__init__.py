"""The search service around ``trainables``, one package per side of it (docs/architecture.md has the map):

- ``search.config``: a config and its data checked before anything starts (schema, space, objectives, capacity,
  the user's network, loading and splitting the data);
- ``search.records``: MLflow written and read (runs, LoggedModels, datasets, the outage-safe writer, the
  leaderboard) and the storage folder;
- ``search.review``: a finished search reviewed, evaluated once on its test set, registered and served;
- ``search.run``: a search run on Ray (Tune, ASHA, the searcher, packing, the lifecycle);
- ``search.cli``: the ``hps`` command on top; ``search.errors``: the errors every side raises.

Heavy dependencies (Ray, MLflow) load only when a search runs; ``hps validate`` stays fast. Importing a package
imports nothing: the thin function a packed trial runs (``search.run.packing.trial``) starts in a fresh Ray worker
process for every trial running at once, and pays for every import it triggers.
"""
