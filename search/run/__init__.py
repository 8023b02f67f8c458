"""A search run on Ray: the lifecycle (run, resume, finish), Tune and ASHA wiring, the Optuna searcher, warm
start, progress lines, and packed trials (``search.run.packing``)."""
