"""LeNet-5 exactly as in PyTorch's "Training a classifier" tutorial (62,006 parameters)."""

import torch
from torch import Tensor, nn
from torch.nn import functional as F


class LeNet5(nn.Module):
    """conv(3->6, 5x5) - pool - conv(6->16, 5x5) - pool - fc 400->120->84->classes, ReLU.

    Input: float images ``(B, 3, 32, 32)``; output: class logits ``(B, num_classes)``.
    """

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.pool = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        x = self.pool(F.relu(self.conv1(x)))
        x = self.pool(F.relu(self.conv2(x)))
        x = torch.flatten(x, 1)
        x = F.relu(self.fc1(x))
        x = F.relu(self.fc2(x))
        return self.fc3(x)
