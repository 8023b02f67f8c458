"""The names ``trainables.data`` held before it was split into sources, tasks, preprocessing and splitting.

Kept for what already refers to them: a registered model's serving code imports ``trainables.data.Preprocessor``
when it loads, and saved models outlive the code that wrote them. New code imports from the modules themselves.
"""

from trainables.names import DataError
from trainables.preprocessing import Preprocessor
from trainables.splitting import SplitDataset, TrialData, split_dataset

__all__ = ["DataError", "Preprocessor", "SplitDataset", "TrialData", "split_dataset"]
