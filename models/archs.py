"""torch builders for the model zoo (no torchvision: written here, same layer structure).

Small models take a 1x16x16 digit image (upsampled scikit-learn digits) and are trained on it;
the full-size architectures take 3x224x224 and keep random weights (speed/memory work, exactness
tests of the FP32 rewrites).
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


def _bn(c: int) -> nn.BatchNorm2d:
    return nn.BatchNorm2d(c)


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, cin: int, cout: int, stride: int = 1):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = _bn(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = _bn(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + idt)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, cin: int, width: int, stride: int = 1):
        super().__init__()
        cout = width * self.expansion
        self.conv1 = nn.Conv2d(cin, width, 1, bias=False)
        self.bn1 = _bn(width)
        self.conv2 = nn.Conv2d(width, width, 3, stride, 1, bias=False)
        self.bn2 = _bn(width)
        self.conv3 = nn.Conv2d(width, cout, 1, bias=False)
        self.bn3 = _bn(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), _bn(cout))

    def forward(self, x):
        idt = x if self.down is None else self.down(x)
        y = F.relu(self.bn1(self.conv1(x)))
        y = F.relu(self.bn2(self.conv2(y)))
        y = self.bn3(self.conv3(y))
        return F.relu(y + idt)


class ResNet(nn.Module):
    def __init__(self, block, layers, widths, in_ch=3, num_classes=1000, stem="imagenet"):
        super().__init__()
        w0 = widths[0]
        if stem == "imagenet":
            self.stem = nn.Sequential(nn.Conv2d(in_ch, w0, 7, 2, 3, bias=False), _bn(w0), nn.ReLU(inplace=True),
                                      nn.MaxPool2d(3, 2, 1))
        else:
            self.stem = nn.Sequential(nn.Conv2d(in_ch, w0, 3, 1, 1, bias=False), _bn(w0), nn.ReLU(inplace=True))
        cin = w0
        stages = []
        for i, (n, w) in enumerate(zip(layers, widths)):
            blocks = []
            for j in range(n):
                stride = 2 if (j == 0 and i > 0) else 1
                blocks.append(block(cin, w, stride))
                cin = w * block.expansion
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        x = self.stages(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class InvertedResidual(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), _bn(hidden), nn.ReLU6(inplace=True)]
        layers += [nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), _bn(hidden),
                   nn.ReLU6(inplace=True), nn.Conv2d(hidden, cout, 1, bias=False), _bn(cout)]
        self.conv = nn.Sequential(*layers)

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.use_res else y


class MobileNetV2(nn.Module):
    # (expand, channels, repeats, stride)
    FULL = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    SMALL = [(1, 16, 1, 1), (4, 24, 2, 2), (4, 32, 2, 1), (4, 48, 2, 2), (4, 64, 1, 1)]

    def __init__(self, cfg=None, in_ch=3, num_classes=1000, stem_stride=2, stem_ch=32, last_ch=1280):
        super().__init__()
        cfg = cfg or self.FULL
        layers: list[nn.Module] = [nn.Conv2d(in_ch, stem_ch, 3, stem_stride, 1, bias=False), _bn(stem_ch),
                                   nn.ReLU6(inplace=True)]
        cin = stem_ch
        for t, c, n, s in cfg:
            for i in range(n):
                layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, last_ch, 1, bias=False), _bn(last_ch), nn.ReLU6(inplace=True)]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(last_ch, num_classes)

    def forward(self, x):
        return self.classifier(torch.flatten(self.pool(self.features(x)), 1))


class ConvConv1x1(nn.Module):
    """A plain stack of (kxk conv + BN) -> (1x1 conv + BN) -> ReLU blocks: merge-conv1x1's target."""

    def __init__(self, in_ch=1, widths=(32, 48, 64), num_classes=10):
        super().__init__()
        blocks: list[nn.Module] = []
        cin = in_ch
        for i, w in enumerate(widths):
            mid = w // 2
            blocks += [nn.Conv2d(cin, mid, 3, 2 if i else 1, 1, bias=False), _bn(mid),
                       nn.Conv2d(mid, w, 1, bias=False), _bn(w), nn.ReLU(inplace=True)]
            cin = w
        self.features = nn.Sequential(*blocks)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(self.pool(self.features(x)), 1))


class Attention(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.scale = 1.0 / math.sqrt(dim // heads)
        self.qkv = nn.Linear(dim, dim * 3)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x):
        b, n, d = x.shape
        h = self.heads
        qkv = self.qkv(x).reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
        q, k, v = qkv[0], qkv[1], qkv[2]
        att = torch.matmul(q, k.transpose(-2, -1)) * self.scale
        att = torch.softmax(att, dim=-1)
        y = torch.matmul(att, v).transpose(1, 2).reshape(b, n, d)
        return self.proj(y)


class EncoderLayer(nn.Module):
    def __init__(self, dim: int, heads: int, mlp: int):
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, heads)
        self.ln2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, mlp)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(mlp, dim)

    def forward(self, x):
        x = x + self.attn(self.ln1(x))
        return x + self.fc2(self.act(self.fc1(self.ln2(x))))


class TinyViT(nn.Module):
    """A ViT-style transformer encoder: patch embedding, pre-norm encoder layers, mean pooling."""

    def __init__(self, in_ch=1, image=16, patch=4, dim=64, depth=2, heads=4, mlp=128, num_classes=10):
        super().__init__()
        self.embed = nn.Conv2d(in_ch, dim, patch, patch)
        n = (image // patch) ** 2
        self.pos = nn.Parameter(torch.zeros(1, n, dim))
        nn.init.normal_(self.pos, std=0.02)
        self.layers = nn.Sequential(*[EncoderLayer(dim, heads, mlp) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x):
        x = self.embed(x).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.layers(x))
        return self.head(x.mean(dim=1))


class SqueezeExcite(nn.Module):
    def __init__(self, c: int, r: int):
        super().__init__()
        self.fc1 = nn.Conv2d(c, r, 1)
        self.fc2 = nn.Conv2d(r, c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        s = torch.sigmoid(self.fc2(F.silu(self.fc1(s))))
        return x * s


class MBConv(nn.Module):
    def __init__(self, cin, cout, k, stride, expand):
        super().__init__()
        hidden = cin * expand
        self.use_res = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), _bn(hidden), nn.SiLU()]
        layers += [nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False), _bn(hidden), nn.SiLU(),
                   SqueezeExcite(hidden, max(1, cin // 4)), nn.Conv2d(hidden, cout, 1, bias=False), _bn(cout)]
        self.block = nn.Sequential(*layers)

    def forward(self, x):
        y = self.block(x)
        return x + y if self.use_res else y


class EfficientNetB0(nn.Module):
    CFG = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3), (6, 112, 3, 1, 5),
           (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]

    def __init__(self, in_ch=3, num_classes=1000):
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(in_ch, 32, 3, 2, 1, bias=False), _bn(32), nn.SiLU()]
        cin = 32
        for t, c, n, s, k in self.CFG:
            for i in range(n):
                layers.append(MBConv(cin, c, k, s if i == 0 else 1, t))
                cin = c
        layers += [nn.Conv2d(cin, 1280, 1, bias=False), _bn(1280), nn.SiLU()]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(1280, num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))


class Decoder(nn.Module):
    """A ConvTranspose decoder (segmentation / super-resolution style), BN after each deconv."""

    def __init__(self, in_ch=64, widths=(64, 32, 16), out_ch=3, groups=(1, 1, 4)):
        super().__init__()
        layers: list[nn.Module] = []
        cin = in_ch
        for w, g in zip(widths, groups):
            layers += [nn.ConvTranspose2d(cin, w, 4, 2, 1, groups=g, bias=False), _bn(w), nn.ReLU(inplace=True),
                       nn.Conv2d(w, w, 3, 1, 1, bias=True), _bn(w), nn.ReLU(inplace=True)]
            cin = w
        layers.append(nn.Conv2d(cin, out_ch, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x):
        return self.net(x)


class _HSE(nn.Module):
    """MobileNetV3's squeeze-excite: avgpool, 1x1 conv, ReLU, 1x1 conv, hard sigmoid, scale."""

    def __init__(self, c: int, r: int = 4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, max(8, c // r), 1)
        self.fc2 = nn.Conv2d(max(8, c // r), c, 1)

    def forward(self, x):
        s = F.adaptive_avg_pool2d(x, 1)
        return x * F.hardsigmoid(self.fc2(F.relu(self.fc1(s))))


class _V3Block(nn.Module):
    def __init__(self, cin, hidden, cout, k, stride, se, act):
        super().__init__()
        a = nn.Hardswish if act == "hs" else nn.ReLU
        layers: list[nn.Module] = []
        if hidden != cin:
            layers += [nn.Conv2d(cin, hidden, 1, bias=False), _bn(hidden), a()]
        layers += [nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False), _bn(hidden), a()]
        if se:
            layers.append(_HSE(hidden))
        layers += [nn.Conv2d(hidden, cout, 1, bias=False), _bn(cout)]
        self.block = nn.Sequential(*layers)
        self.res = stride == (1, 1) and cin == cout

    def forward(self, x):
        y = self.block(x)
        return x + y if self.res else y


class TextDirectionClassifier(nn.Module):
    """The structure of PaddleOCR's text direction classifier: MobileNetV3-small (scale 0.35), 3x48x192 crops,
    strides (2, 1) in the later stages so the width survives, 2 classes; 53 convolutions."""

    CFG = [  # k, hidden, out, se, act, stride
        (3, 16, 16, True, "re", (2, 1)), (3, 72, 24, False, "re", (2, 1)), (3, 88, 24, False, "re", 1),
        (5, 96, 40, True, "hs", (2, 1)), (5, 240, 40, True, "hs", 1), (5, 240, 40, True, "hs", 1),
        (5, 120, 48, True, "hs", 1), (5, 144, 48, True, "hs", 1), (5, 288, 96, True, "hs", (2, 1)),
        (5, 576, 96, True, "hs", 1), (5, 576, 96, True, "hs", 1)]

    def __init__(self, scale: float = 0.35, num_classes: int = 2):
        super().__init__()

        def mk(c):
            return max(8, int(round(c * scale / 8)) * 8)

        layers: list[nn.Module] = [nn.Conv2d(3, mk(16), 3, 2, 1, bias=False), _bn(mk(16)), nn.Hardswish()]
        cin = mk(16)
        for k, h, o, se, act, s in self.CFG:
            layers.append(_V3Block(cin, mk(h), mk(o), k, s if isinstance(s, tuple) else (s, s), se, act))
            cin = mk(o)
        layers += [nn.Conv2d(cin, mk(576), 1, bias=False), _bn(mk(576)), nn.Hardswish(), nn.MaxPool2d(2, 2)]
        self.features = nn.Sequential(*layers)
        self.fc = nn.Linear(mk(576), num_classes)

    def forward(self, x):
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(self.features(x), 1), 1))
