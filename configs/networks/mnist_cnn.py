"""A small convolutional network for 28x28 grey images (MNIST, Fashion-MNIST; configs/mnist_cnn.yaml): two blocks of
convolution, batch norm, ReLU and 2x2 max-pooling, then a classifier, in plain PyTorch. `hps` calls
``MnistCNN(input_shape=[1, 28, 28], num_classes=10, ...)`` with each trial's sampled values."""

import torch


def block(in_channels, out_channels, kernel_size):
    return torch.nn.Sequential(
        torch.nn.Conv2d(in_channels, out_channels, kernel_size, padding=kernel_size // 2),
        torch.nn.BatchNorm2d(out_channels),
        torch.nn.ReLU(),
        torch.nn.MaxPool2d(2),
    )


class MnistCNN(torch.nn.Module):
    def __init__(self, input_shape, num_classes, channels=32, kernel_size=3, dropout=0.25, hidden=128):
        super().__init__()
        in_channels, height, width = input_shape
        self.features = torch.nn.Sequential(block(in_channels, channels, kernel_size),
                                            block(channels, 2 * channels, kernel_size))  # 28 -> 14 -> 7
        self.classifier = torch.nn.Sequential(
            torch.nn.Flatten(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(2 * channels * (height // 4) * (width // 4), hidden),
            torch.nn.ReLU(),
            torch.nn.Dropout(dropout),
            torch.nn.Linear(hidden, num_classes),
        )

    def forward(self, x):
        return self.classifier(self.features(x))
