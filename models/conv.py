"""Conv-2, Conv-4 and Conv-6 of Frankle & Carbin (2019), Figure 2: VGG-like stacks of 3x3 convolutions (64-64,
64-64-128-128, 64-64-128-128-256-256), a 2x2 max-pool after each pair, then fully connected 256-256-10. With the
lab's BatchNorm and dropout flags (BatchNorm after every convolution; dropout before every fully connected layer)
and the lab's He-uniform initialisation, so the re-init controls draw at the model's own scale."""
import torch.nn as nn

import helpers as H


class Conv(nn.Module):
    def __init__(self, widths: tuple[int, ...], batchnorm: bool = True, dropout: float = 0.0, num_classes: int = 10):
        super().__init__()
        H.check_fraction("dropout", dropout)
        layers, c_in = [], 3
        for i, c_out in enumerate(widths):
            layers.append(H.conv_block(c_in, c_out, batchnorm, pool=False))
            if i % 2:
                layers.append(nn.MaxPool2d(2))
            c_in = c_out
        self.features = nn.Sequential(*layers, nn.Flatten())
        side = 32 >> (len(widths) // 2)
        self.classifier = nn.Sequential(nn.Dropout(dropout), nn.Linear(c_in * side * side, 256), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(256, 256), nn.ReLU(inplace=True),
                                        nn.Dropout(dropout), nn.Linear(256, num_classes))
        for weight in H.prunable_weights(self).values():
            H.init_weight(weight)
        for m in self.modules():
            if isinstance(m, (nn.Conv2d, nn.Linear)) and m.bias is not None:
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.features(x))


H.MODELS["conv2"] = lambda **flags: Conv((64, 64), **flags)
H.MODELS["conv4"] = lambda **flags: Conv((64, 64, 128, 128), **flags)
H.MODELS["conv6"] = lambda **flags: Conv((64, 64, 128, 128, 256, 256), **flags)
