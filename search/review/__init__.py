"""A finished search reviewed and used: the report and plots, `hps evaluate` (the test set, once), the Model
Registry, `hps predict` and the served pyfunc."""
