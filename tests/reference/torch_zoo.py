"""PyTorch ground truth for the parameter counts of the zoo (zoo/*.arch).

Each zoo model is defined here once more in PyTorch, as the configuration its
.arch header names (torchvision constructors where torchvision has exactly
that configuration, with any CIFAR change written out below). For every model
the script builds it for a 3x32x32 input with 10 classes ("cifar10") and for a
1x28x28 input with 10 classes ("mnist"), counts

    sum(p.numel() for p in model.parameters())

runs one forward pass to prove the definition works and yields [batch, 10],
and writes tests/reference/zoo_params.json:

    {"resnet18": {"cifar10": 11173962, "mnist": 11172810}, ...}

A model whose .arch header says it does not support 28x28 gets "mnist": null;
the script checks that PyTorch fails on it too.

Install (in a virtual environment outside the repository) and run:

    python3 -m venv /work/venv-torch
    /work/venv-torch/bin/pip install torch torchvision numpy
    /work/venv-torch/bin/python tests/reference/torch_zoo.py

No weights or data are downloaded; it runs on CPU in about a minute.
"""

import json
import math
import pathlib
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

OUT = pathlib.Path(__file__).with_name("zoo_params.json")


# ---------------------------------------------------------------- LeNet-5
def lenet5(cin, classes, hw):
    # kuangliu/pytorch-cifar models/lenet.py, input channels and flattened
    # size following the image.
    side = ((hw - 4) // 2 - 4) // 2
    return nn.Sequential(
        nn.Conv2d(cin, 6, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(6, 16, 5), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(),
        nn.Linear(16 * side * side, 120), nn.ReLU(),
        nn.Linear(120, 84), nn.ReLU(),
        nn.Linear(84, classes),
    )


# ---------------------------------------------------------------- AlexNet
def alexnet(cin, classes, hw):
    # bearpaw/pytorch-classification models/cifar/alexnet.py
    return nn.Sequential(
        nn.Conv2d(cin, 64, kernel_size=11, stride=4, padding=5), nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(64, 192, kernel_size=5, padding=2), nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Conv2d(192, 384, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(384, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.Conv2d(256, 256, kernel_size=3, padding=1), nn.ReLU(),
        nn.MaxPool2d(2, 2),
        nn.Flatten(),
        nn.Linear(256, classes),
    )


# ---------------------------------------------------------------- VGG-BN
VGG_CFG = {
    "vgg11_bn": [64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M"],
    "vgg16_bn": [64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                 512, 512, 512, "M", 512, 512, 512, "M"],
}


def vgg(name):
    # kuangliu/pytorch-cifar models/vgg.py (its AvgPool2d(1, 1) is the identity)
    def build(cin, classes, hw):
        layers, c = [], cin
        for x in VGG_CFG[name]:
            if x == "M":
                layers.append(nn.MaxPool2d(2, 2))
            else:
                layers += [nn.Conv2d(c, x, 3, padding=1), nn.BatchNorm2d(x), nn.ReLU()]
                c = x
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(512, classes))
    return build


# ---------------------------------------------------------------- ResNet (CIFAR)
class BasicBlock(nn.Module):
    """kuangliu/pytorch-cifar models/resnet.py BasicBlock, optional SE gate."""

    def __init__(self, cin, c, stride, se=False):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.se = SqueezeExcite(c, c // 16, nn.ReLU) if se else nn.Identity()
        self.shortcut = nn.Sequential()
        if stride != 1 or cin != c:
            self.shortcut = nn.Sequential(
                nn.Conv2d(cin, c, 1, stride, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return F.relu(out + self.shortcut(x))


class PreActBlock(nn.Module):
    """kuangliu's PreActBlock; also WRN's block (xternalz) when the projection
    exists for a width change at stride 1."""

    def __init__(self, cin, c, stride):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(cin)
        self.conv1 = nn.Conv2d(cin, c, 3, stride, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c)
        self.conv2 = nn.Conv2d(c, c, 3, 1, 1, bias=False)
        self.proj = None
        if stride != 1 or cin != c:
            self.proj = nn.Conv2d(cin, c, 1, stride, bias=False)

    def forward(self, x):
        out = F.relu(self.bn1(x))
        shortcut = self.proj(out) if self.proj is not None else x
        out = self.conv1(out)
        out = self.conv2(F.relu(self.bn2(out)))
        return out + shortcut


class ResNet(nn.Module):
    def __init__(self, block, widths, blocks, cin, classes, stem=64,
                 strides=(1, 2, 2, 2), stem_bn=True, final_bn=False, **kw):
        super().__init__()
        layers = [nn.Conv2d(cin, stem, 3, 1, 1, bias=False)]
        if stem_bn:
            layers += [nn.BatchNorm2d(stem), nn.ReLU()]
        c = stem
        for w, n, s in zip(widths, blocks, strides):
            for i in range(n):
                layers.append(block(c, w, s if i == 0 else 1, **kw))
                c = w
        if final_bn:
            layers += [nn.BatchNorm2d(c), nn.ReLU()]
        self.body = nn.Sequential(*layers)
        self.linear = nn.Linear(c, classes)

    def forward(self, x):
        out = self.body(x)
        # global average pooling == kuangliu's avg_pool2d(out, 4) / WRN's
        # avg_pool2d(out, 8) on a 32x32 input
        return self.linear(F.adaptive_avg_pool2d(out, 1).flatten(1))


def resnet18(cin, classes, hw):
    return ResNet(BasicBlock, (64, 128, 256, 512), (2, 2, 2, 2), cin, classes)


def resnet34(cin, classes, hw):
    return ResNet(BasicBlock, (64, 128, 256, 512), (3, 4, 6, 3), cin, classes)


def se_resnet18(cin, classes, hw):
    return ResNet(BasicBlock, (64, 128, 256, 512), (2, 2, 2, 2), cin, classes, se=True)


def preact_resnet18(cin, classes, hw):
    # kuangliu PreActResNet18 + final BN-ReLU (locuslab/robust_overfitting)
    return ResNet(PreActBlock, (64, 128, 256, 512), (2, 2, 2, 2), cin, classes,
                  stem_bn=False, final_bn=True)


def wrn16_4(cin, classes, hw):
    # xternalz/WideResNet-pytorch WideResNet(16, classes, widen_factor=4)
    n = (16 - 4) // 6
    return ResNet(PreActBlock, (64, 128, 256), (n, n, n), cin, classes, stem=16,
                  strides=(1, 2, 2), stem_bn=False, final_bn=True)


# ---------------------------------------------------------------- DenseNet-BC
class DenseLayer(nn.Module):
    def __init__(self, cin, growth):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(cin), nn.ReLU(), nn.Conv2d(cin, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(),
            nn.Conv2d(4 * growth, growth, 3, padding=1, bias=False))

    def forward(self, x):
        return torch.cat([x, self.body(x)], 1)


def densenet_bc100(cin, classes, hw):
    # andreasveit/densenet-pytorch DenseNet3(100, classes, 12, 0.5, bottleneck=True)
    growth, n = 12, (100 - 4) // 6
    c = 2 * growth
    layers = [nn.Conv2d(cin, c, 3, padding=1, bias=False)]
    for stage in range(3):
        for _ in range(n):
            layers.append(DenseLayer(c, growth))
            c += growth
        if stage < 2:
            out = int(math.floor(c * 0.5))
            layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.Conv2d(c, out, 1, bias=False),
                       nn.AvgPool2d(2)]
            c = out
    layers += [nn.BatchNorm2d(c), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
               nn.Linear(c, classes)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- torchvision
def first_conv_in(conv, cin):
    """The same conv with `cin` input channels (1 for 28x28 grey images)."""
    return nn.Conv2d(cin, conv.out_channels, conv.kernel_size, conv.stride,
                     conv.padding, conv.dilation, conv.groups, conv.bias is not None)


def mobilenetv2(cin, classes, hw):
    m = torchvision.models.mobilenet_v2(num_classes=classes)
    # CIFAR strides of kuangliu's mobilenetv2.py: stem and first 24-wide block
    # at stride 1 (no parameter changes).
    m.features[0][0] = first_conv_in(m.features[0][0], cin)
    m.features[0][0].stride = (1, 1)
    m.features[2].conv[1][0].stride = (1, 1)
    return m


def shufflenetv2(cin, classes, hw):
    m = torchvision.models.shufflenet_v2_x1_0(num_classes=classes)
    # CIFAR stem of kuangliu's shufflenetv2.py: 3x3 stride 1, no max pool.
    m.conv1[0] = first_conv_in(m.conv1[0], cin)
    m.conv1[0].stride = (1, 1)
    m.maxpool = nn.Identity()
    return m


def squeezenet1_1(cin, classes, hw):
    m = torchvision.models.squeezenet1_1(num_classes=classes)
    m.features[0] = first_conv_in(m.features[0], cin)
    return m


def efficientnet_b0(cin, classes, hw):
    m = torchvision.models.efficientnet_b0(num_classes=classes)
    # CIFAR stem of kuangliu's efficientnet.py: stride 1.
    m.features[0][0] = first_conv_in(m.features[0][0], cin)
    m.features[0][0].stride = (1, 1)
    return m


# ---------------------------------------------------------------- GoogLeNet
def cbr(cin, c, k=1):
    return [nn.Conv2d(cin, c, k, padding=k // 2), nn.BatchNorm2d(c), nn.ReLU()]


class Inception(nn.Module):
    """kuangliu/pytorch-cifar models/googlenet.py Inception."""

    def __init__(self, cin, c1, r3, c3, r5, c5, pool):
        super().__init__()
        self.b1 = nn.Sequential(*cbr(cin, c1))
        self.b2 = nn.Sequential(*cbr(cin, r3), *cbr(r3, c3, 3))
        self.b3 = nn.Sequential(*cbr(cin, r5), *cbr(r5, c5, 3), *cbr(c5, c5, 3))
        self.b4 = nn.Sequential(nn.MaxPool2d(3, 1, 1), *cbr(cin, pool))
        self.out = c1 + c3 + c5 + pool

    def forward(self, x):
        return torch.cat([self.b1(x), self.b2(x), self.b3(x), self.b4(x)], 1)


def googlenet(cin, classes, hw):
    table = [(64, 96, 128, 16, 32, 32), (128, 128, 192, 32, 96, 64), "M",
             (192, 96, 208, 16, 48, 64), (160, 112, 224, 24, 64, 64),
             (128, 128, 256, 24, 64, 64), (112, 144, 288, 32, 64, 64),
             (256, 160, 320, 32, 128, 128), "M",
             (256, 160, 320, 32, 128, 128), (384, 192, 384, 48, 128, 128)]
    layers, c = cbr(cin, 192, 3), 192
    for row in table:
        if row == "M":
            layers.append(nn.MaxPool2d(3, 2, 1))
        else:
            layers.append(Inception(c, *row))
            c = layers[-1].out
    layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(c, classes)]
    return nn.Sequential(*layers)


# ---------------------------------------------------------------- SE gate
class SqueezeExcite(nn.Module):
    def __init__(self, c, r, act):
        super().__init__()
        self.fc1, self.act, self.fc2 = nn.Linear(c, r), act(), nn.Linear(r, c)

    def forward(self, x):
        w = torch.sigmoid(self.fc2(self.act(self.fc1(x.mean((2, 3))))))
        return x * w[:, :, None, None]


# ---------------------------------------------------------------- ViT-Tiny
class EncoderBlock(nn.Module):
    def __init__(self, d, heads, mlp):
        super().__init__()
        self.ln1 = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, heads, batch_first=True)
        self.ln2 = nn.LayerNorm(d)
        self.mlp = nn.Sequential(nn.Linear(d, mlp), nn.GELU(), nn.Linear(mlp, d))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class ViT(nn.Module):
    """timm VisionTransformer(img_size=hw, patch_size=4, embed_dim=192, depth=12,
    num_heads=3, mlp_ratio=4): class token, learned position embedding."""

    def __init__(self, cin, classes, hw, d=192, depth=12, heads=3, mlp=768, patch=4):
        super().__init__()
        n = (hw // patch) ** 2
        self.patch = nn.Conv2d(cin, d, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, d))
        self.pos_embed = nn.Parameter(torch.zeros(1, n + 1, d))
        self.blocks = nn.Sequential(*[EncoderBlock(d, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(d)
        self.head = nn.Linear(d, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], 1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


def vit_tiny(cin, classes, hw):
    return ViT(cin, classes, hw)


# ---------------------------------------------------------------- MLP
def mlp(cin, classes, hw):
    # Srivastava et al. 2014, table 2: 3 ReLU layers of 1024, dropout 0.2/0.5
    return nn.Sequential(
        nn.Flatten(), nn.Dropout(0.2),
        nn.Linear(cin * hw * hw, 1024), nn.ReLU(), nn.Dropout(),
        nn.Linear(1024, 1024), nn.ReLU(), nn.Dropout(),
        nn.Linear(1024, 1024), nn.ReLU(), nn.Dropout(),
        nn.Linear(1024, classes))


ZOO = {
    "lenet5": lenet5,
    "alexnet": alexnet,
    "vgg11_bn": vgg("vgg11_bn"),
    "vgg16_bn": vgg("vgg16_bn"),
    "resnet18": resnet18,
    "resnet34": resnet34,
    "preact_resnet18": preact_resnet18,
    "wrn16_4": wrn16_4,
    "densenet_bc100": densenet_bc100,
    "mobilenetv2": mobilenetv2,
    "shufflenetv2": shufflenetv2,
    "squeezenet1_1": squeezenet1_1,
    "googlenet": googlenet,
    "efficientnet_b0": efficientnet_b0,
    "se_resnet18": se_resnet18,
    "vit_tiny": vit_tiny,
    "mlp": mlp,
}

# Models whose .arch header declares 28x28 unsupported: the map collapses.
NO_28 = {"alexnet", "vgg11_bn", "vgg16_bn"}

BINDINGS = {"cifar10": (3, 32), "mnist": (1, 28)}


def measure(build, cin, hw, classes=10):
    model = build(cin, classes, hw).eval()
    params = sum(p.numel() for p in model.parameters())
    with torch.no_grad():
        out = model(torch.zeros(2, cin, hw, hw))
    assert tuple(out.shape) == (2, classes), out.shape
    return params, tuple(out.shape)


def main():
    torch.manual_seed(0)
    result = {}
    for name, build in ZOO.items():
        result[name] = {}
        for binding, (cin, hw) in BINDINGS.items():
            if binding == "mnist" and name in NO_28:
                try:
                    measure(build, cin, hw)
                except RuntimeError:
                    result[name][binding] = None
                    print(f"{name:16} {binding:8} unsupported (PyTorch fails too)")
                    continue
                sys.exit(f"{name} runs on {cin}x{hw}x{hw}: drop it from NO_28")
            params, shape = measure(build, cin, hw)
            result[name][binding] = params
            print(f"{name:16} {binding:8} {params:>10}  output {list(shape)}")
    OUT.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()
