"""The file names of a trial checkpoint (written and read by :mod:`trainables.checkpoint`), without torch: the
search's driver finds models in checkpoints without loading PyTorch."""

STATE_FILE = "state.pt"
MODEL_DIR = "model"
WEIGHTS_FILE = "weights.pt"
DESCRIPTION_FILE = "model.json"
