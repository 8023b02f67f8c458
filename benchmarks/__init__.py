"""Benchmarks of the search service (not part of the test suite): ``python -m benchmarks``.

Four side-by-side figures, each the median of several repetitions, on the machine they run on:

1. ``throughput``: samples/s of the trainable vs the course-notes DataLoader loop (same model, data, batch, epochs);
2. ``overhead``: wall time of ``hps run`` (FIFO) vs a plain Optuna script training the same configurations, as a ratio;
3. ``asha``: total epochs trained and best validation accuracy of ASHA vs FIFO at the same number of trials;
4. ``packed``: epochs/s of 1, 4, 8 and 16 compatible trials trained as one pack vs one after another.
"""
