"""A small convolutional network for the 8x8 digit images (configs/digits_cnn.yaml): two 3x3 (or 5x5) convolutions
with batch norm and ReLU, a 2x2 max-pool, then a small classifier. Plain PyTorch, as in the course notes: `hps`
calls ``DigitsCNN(input_shape=[1, 8, 8], num_classes=10, channels=..., kernel_size=..., dropout=...)`` with the
values each trial sampled, and feeds it rows reshaped to ``input_shape``."""

import torch


class DigitsCNN(torch.nn.Module):
    def __init__(self, input_shape, num_classes, channels=32, kernel_size=3, dropout=0.25, hidden=128):
        super().__init__()
        in_channels, height, width = input_shape
        padding = kernel_size // 2  # "same" convolutions: the 8x8 grid is kept until the pool
        self.features = torch.nn.Sequential(
            torch.nn.Conv2d(in_channels, channels, kernel_size, padding=padding),
            torch.nn.BatchNorm2d(channels),
            torch.nn.ReLU(),
            torch.nn.Conv2d(channels, 2 * channels, kernel_size, padding=padding),
            torch.nn.BatchNorm2d(2 * channels),
            torch.nn.ReLU(),
            torch.nn.MaxPool2d(2),
            torch.nn.Dropout(dropout),
        )
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Linear(2 * channels * (height // 2) * (width // 2), hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        logits = self.classifier(self.features(x))
        return logits, torch.nn.functional.softmax(logits, dim=1)
