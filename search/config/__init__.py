"""What a config says and means, checked before anything starts: the schema (pydantic), the space as Optuna
distributions, the objectives, whether the trials fit this host, the user's network, the data loaded and split."""
