"""CIFAR-10 at the airbench frontier: small residual networks, their published recipes and cost metrics."""
