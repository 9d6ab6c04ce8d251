import math

import torch
from torch.nn import functional as F

from lenet_lightning import LeNet5


def test_output_shape():
    assert LeNet5()(torch.randn(5, 3, 32, 32)).shape == (5, 10)


def test_parameter_count_matches_the_tutorial():
    assert sum(p.numel() for p in LeNet5().parameters()) == 62_006


def test_layers_are_the_tutorial_layers():
    net = LeNet5()
    assert (net.conv1.in_channels, net.conv1.out_channels, net.conv1.kernel_size) == (3, 6, (5, 5))
    assert (net.conv2.in_channels, net.conv2.out_channels, net.conv2.kernel_size) == (6, 16, (5, 5))
    assert [(fc.in_features, fc.out_features) for fc in (net.fc1, net.fc2, net.fc3)] == [
        (400, 120),
        (120, 84),
        (84, 10),
    ]


def test_every_parameter_gets_a_gradient():
    net = LeNet5()
    F.cross_entropy(net(torch.randn(8, 3, 32, 32)), torch.arange(8)).backward()
    for name, parameter in net.named_parameters():
        assert parameter.grad is not None, name
        assert parameter.grad.abs().sum() > 0, name


def test_initial_loss_is_near_ln10():
    torch.manual_seed(0)
    loss = F.cross_entropy(LeNet5()(torch.randn(256, 3, 32, 32)), torch.randint(0, 10, (256,)))
    assert abs(loss.item() - math.log(10)) < 0.1
