"""The registered MLflow model: a pyfunc defined from this file ("models from code"), not a pickle.

It rebuilds the network from ``model.json`` and loads ``weights.pt`` with ``torch.load(weights_only=True)``;
input is raw table rows (a DataFrame with the training table's feature columns), output the prediction
(class label + per-class probabilities, or the value).
"""

from __future__ import annotations

import mlflow
import pandas as pd
from mlflow.pyfunc import PythonModel


class HpsModel(PythonModel):
    """Preprocessing + MLP, as a pyfunc."""

    def load_context(self, context) -> None:
        from trainables.checkpoint import load_model
        from trainables.data import Preprocessor

        self.model, description = load_model(context.artifacts["model"])
        self.preprocessor = Preprocessor.from_dict(description["preprocessor"])

    def predict(self, context, model_input: pd.DataFrame, params=None) -> pd.DataFrame:
        from trainables.predict import predict_frame

        return predict_frame(self.model, self.preprocessor, model_input)


mlflow.models.set_model(HpsModel())
