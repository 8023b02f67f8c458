"""MLflow written and read: the parent and trial runs, the outage-safe writer, LoggedModels, dataset inputs,
the leaderboard read back, the tracking connection, and the storage folder a search's state lives in."""
