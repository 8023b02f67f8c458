"""Packed trials: the pack servers started by the driver (``servers``), the server actor (``server``) and the
thin trial that trains in one (``trial``)."""
