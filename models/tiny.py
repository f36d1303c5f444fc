"""A tiny CNN: the smallest model file, for quick checks and the tests (a few seconds an epoch on a CPU, far from
70%). A model file is this: an nn.Module whose constructor takes batchnorm, dropout and num_classes, registered
under a short name in `helpers.MODELS`."""
import torch.nn as nn

import helpers as H


class Tiny(nn.Module):
    def __init__(self, batchnorm: bool = True, dropout: float = 0.0, num_classes: int = 10):
        super().__init__()
        self.features = nn.Sequential(H.conv_block(3, 8, batchnorm, pool=True),
                                      H.conv_block(8, 16, batchnorm, pool=True),
                                      nn.AdaptiveMaxPool2d(1), nn.Flatten(), nn.Dropout(dropout))
        self.classifier = nn.Linear(16, num_classes)

    def forward(self, x):
        return self.classifier(self.features(x))


H.MODELS["tiny"] = Tiny
