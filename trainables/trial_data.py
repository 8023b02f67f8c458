"""What a trial receives (:class:`TrialData`), in a module of its own: trial workers unpickle it without loading
pandas or scikit-learn, which only the driver's splitting needs (:mod:`trainables.splitting`)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass
class TrialData:
    """What a trial receives: standardized train/validation arrays and how they were made."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    preprocessor: dict

    @property
    def task(self) -> str:
        return self.preprocessor["task"]
