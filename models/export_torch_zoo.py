"""Export a zoo of small, randomly initialised CNN-style models to ONNX.

These are *test inputs* for eeonnx: hand-written ``torch.nn.Module`` imitations of
real topologies (ResNet, MobileNetV2/V3, ShuffleNetV2, DenseNet, EfficientNet,
a YOLOv8-like detector, audio CNNs, a UNet, a DBNet text-detector head and an
MLP), at reduced widths so every file stays well under 5 MB.  They are what a
new user would feed to the compiler after exporting their own PyTorch model.

Every model is exported twice:

* ``<name>.ts.onnx``     -- TorchScript exporter (``dynamo=False``, opset 17)
* ``<name>.dynamo.onnx`` -- dynamo exporter (``dynamo=True``, opset 18)

with a symbolic batch dimension (and symbolic spatial dims for the
``*_dynhw`` variants).  Each file is checked in ONNX Runtime (CPU) against the
eager torch output at a batch size different from the one used for export.
A dynamo export failure is recorded and the TorchScript file is kept.

The output directory gets ``INDEX.md`` (human-readable) and ``index.json``
(one record per file: inputs, outputs, exporter, opset, node count, op-type
histogram, check result, errors).

torch is an optional extra (``pip install eeonnx[torch]``); it is imported only
inside :func:`main`, so this module can be imported without it.

Usage::

    python models/export_torch_zoo.py --out out/zoo
    python models/export_torch_zoo.py --out zoo --only resnet_like yolov8_like
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys
import traceback

# Ops eeonnx is expected to handle; anything else is flagged in INDEX.md.
KNOWN_OPS = set(
    "Conv ConvTranspose BatchNormalization InstanceNormalization Gemm MatMul Add Sub "
    "Mul Div Relu Clip Sigmoid HardSigmoid HardSwish Tanh MaxPool AveragePool "
    "GlobalAveragePool Resize Flatten Reshape Transpose Squeeze Unsqueeze Concat "
    "Split Slice Identity Shape Gather Constant ReduceMean Softmax".split()
)

EXPORT_BATCH = 2  # batch used for tracing (not 1: dynamo specialises size-1 dims)
CHECK_BATCH = 3  # batch used for the ORT-vs-torch check (proves the batch dim is dynamic)
REL_TOL = 1e-4


def build_models(torch):
    """Return a list of model specs.

    Each spec is a dict: name, module (eval mode), inputs (list of
    (name, shape-with-batch-placeholder)), outputs (names), dyn (per-input
    {axis: dim_name}), check_shapes (optional: shapes used for the ORT check),
    note.
    """
    nn = torch.nn
    F = torch.nn.functional

    # ------------------------------------------------------------------ helpers
    def conv_bn(cin, cout, k=3, s=1, p=None, groups=1, act="relu", dim=2):
        p = (k // 2) if p is None else p
        Conv = nn.Conv2d if dim == 2 else nn.Conv1d
        BN = nn.BatchNorm2d if dim == 2 else nn.BatchNorm1d
        layers = [Conv(cin, cout, k, s, p, groups=groups, bias=False), BN(cout)]
        if act == "relu":
            layers.append(nn.ReLU(inplace=True))
        elif act == "relu6":
            layers.append(nn.ReLU6(inplace=True))
        elif act == "hswish":
            layers.append(nn.Hardswish())
        elif act == "silu":
            layers.append(nn.SiLU())
        elif act is not None:
            raise ValueError(act)
        return nn.Sequential(*layers)

    # ------------------------------------------------------------------ ResNet
    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.relu = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.downsample = None
            if stride != 1 or cin != cout:
                self.downsample = nn.Sequential(
                    nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
                )

        def forward(self, x):
            identity = x if self.downsample is None else self.downsample(x)
            out = self.relu(self.bn1(self.conv1(x)))
            out = self.bn2(self.conv2(out))
            return self.relu(out + identity)

    class ResNetLike(nn.Module):
        """torchvision resnet18 layout, widths /4."""

        def __init__(self, widths=(16, 32, 64, 128), blocks=(2, 2, 2, 2), num_classes=10):
            super().__init__()
            self.conv1 = nn.Conv2d(3, widths[0], 7, 2, 3, bias=False)
            self.bn1 = nn.BatchNorm2d(widths[0])
            self.relu = nn.ReLU(inplace=True)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            layers, cin = [], widths[0]
            for i, (w, n) in enumerate(zip(widths, blocks)):
                stage = []
                for j in range(n):
                    stage.append(BasicBlock(cin, w, 2 if (j == 0 and i > 0) else 1))
                    cin = w
                layers.append(nn.Sequential(*stage))
            self.layer1, self.layer2, self.layer3, self.layer4 = layers
            self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
            self.fc = nn.Linear(cin, num_classes)

        def forward(self, x):
            x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
            x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
            x = torch.flatten(self.avgpool(x), 1)
            return self.fc(x)

    # ------------------------------------------------------------- MobileNetV2
    class InvertedResidual(nn.Module):
        def __init__(self, cin, cout, stride, expand):
            super().__init__()
            hidden = cin * expand
            self.use_res = stride == 1 and cin == cout
            layers = []
            if expand != 1:
                layers.append(conv_bn(cin, hidden, 1, act="relu6"))
            layers += [
                conv_bn(hidden, hidden, 3, stride, groups=hidden, act="relu6"),
                conv_bn(hidden, cout, 1, act=None),
            ]
            self.conv = nn.Sequential(*layers)

        def forward(self, x):
            return x + self.conv(x) if self.use_res else self.conv(x)

    class MobileNetV2Like(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            # (expand t, channels c, repeats n, stride s) -- torchvision table, widths /2
            cfg = [(1, 8, 1, 1), (6, 12, 2, 2), (6, 16, 3, 2), (6, 32, 2, 2), (6, 48, 2, 1), (6, 80, 1, 2)]
            layers, cin = [conv_bn(3, 16, 3, 2, act="relu6")], 16
            for t, c, n, s in cfg:
                for i in range(n):
                    layers.append(InvertedResidual(cin, c, s if i == 0 else 1, t))
                    cin = c
            layers.append(conv_bn(cin, 320, 1, act="relu6"))
            self.features = nn.Sequential(*layers)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(320, num_classes))

        def forward(self, x):
            x = self.features(x)
            x = F.adaptive_avg_pool2d(x, (1, 1))
            x = torch.flatten(x, 1)
            return self.classifier(x)

    # ------------------------------------------------------------- MobileNetV3
    class SqueezeExcitation(nn.Module):
        """torchvision SE: avgpool -> fc1 -> act -> fc2 -> scale_act -> mul."""

        def __init__(self, c, squeeze, act=nn.ReLU, scale_act=nn.Hardsigmoid):
            super().__init__()
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.fc1 = nn.Conv2d(c, squeeze, 1)
            self.fc2 = nn.Conv2d(squeeze, c, 1)
            self.act = act()
            self.scale_act = scale_act()

        def forward(self, x):
            s = self.scale_act(self.fc2(self.act(self.fc1(self.avgpool(x)))))
            return s * x

    class V3Block(nn.Module):
        def __init__(self, cin, k, exp, cout, se, act, stride):
            super().__init__()
            self.use_res = stride == 1 and cin == cout
            layers = []
            if exp != cin:
                layers.append(conv_bn(cin, exp, 1, act=act))
            layers.append(conv_bn(exp, exp, k, stride, groups=exp, act=act))
            if se:
                layers.append(SqueezeExcitation(exp, max(8, exp // 4)))
            layers.append(conv_bn(exp, cout, 1, act=None))
            self.block = nn.Sequential(*layers)

        def forward(self, x):
            y = self.block(x)
            return y + x if self.use_res else y

    class MobileNetV3Like(nn.Module):
        """mobilenet_v3_small layout, reduced widths."""

        def __init__(self, num_classes=10):
            super().__init__()
            # (in, kernel, expanded, out, SE, activation, stride)
            cfg = [
                (16, 3, 16, 16, True, "relu", 2),
                (16, 3, 48, 24, False, "relu", 2),
                (24, 3, 64, 24, False, "relu", 1),
                (24, 5, 96, 40, True, "hswish", 2),
                (40, 5, 160, 40, True, "hswish", 1),
                (40, 5, 96, 48, True, "hswish", 1),
                (48, 5, 192, 64, True, "hswish", 2),
            ]
            layers = [conv_bn(3, 16, 3, 2, act="hswish")]
            layers += [V3Block(*c) for c in cfg]
            layers.append(conv_bn(64, 288, 1, act="hswish"))
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(
                nn.Linear(288, 512), nn.Hardswish(), nn.Dropout(0.2), nn.Linear(512, num_classes)
            )

        def forward(self, x):
            x = self.avgpool(self.features(x))
            return self.classifier(torch.flatten(x, 1))

    # ------------------------------------------------------------- ShuffleNetV2
    def channel_shuffle(x, groups):
        b, c, h, w = x.size()
        x = x.view(b, groups, c // groups, h, w)
        x = torch.transpose(x, 1, 2).contiguous()
        return x.view(b, -1, h, w)

    class ShuffleUnit(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.stride = stride
            bf = cout // 2
            if stride > 1:
                self.branch1 = nn.Sequential(
                    conv_bn(cin, cin, 3, stride, groups=cin, act=None),
                    conv_bn(cin, bf, 1),
                )
            else:
                self.branch1 = nn.Sequential()
            self.branch2 = nn.Sequential(
                conv_bn(cin if stride > 1 else bf, bf, 1),
                conv_bn(bf, bf, 3, stride, groups=bf, act=None),
                conv_bn(bf, bf, 1),
            )

        def forward(self, x):
            if self.stride == 1:
                x1, x2 = x.chunk(2, dim=1)
                out = torch.cat((x1, self.branch2(x2)), dim=1)
            else:
                out = torch.cat((self.branch1(x), self.branch2(x)), dim=1)
            return channel_shuffle(out, 2)

    class ShuffleNetV2Like(nn.Module):
        def __init__(self, num_classes=10):
            super().__init__()
            stages, chans = (2, 3, 2), (24, 48, 96, 192, 512)
            self.conv1 = conv_bn(3, chans[0], 3, 2)
            self.maxpool = nn.MaxPool2d(3, 2, 1)
            cin, ss = chans[0], []
            for n, cout in zip(stages, chans[1:4]):
                seq = [ShuffleUnit(cin, cout, 2)] + [ShuffleUnit(cout, cout, 1) for _ in range(n - 1)]
                ss.append(nn.Sequential(*seq))
                cin = cout
            self.stage2, self.stage3, self.stage4 = ss
            self.conv5 = conv_bn(cin, chans[4], 1)
            self.fc = nn.Linear(chans[4], num_classes)

        def forward(self, x):
            x = self.maxpool(self.conv1(x))
            x = self.conv5(self.stage4(self.stage3(self.stage2(x))))
            x = x.mean([2, 3])  # torchvision's global pool
            return self.fc(x)

    # ---------------------------------------------------------------- DenseNet
    class DenseLayer(nn.Module):
        def __init__(self, cin, growth, bn_size):
            super().__init__()
            self.norm1 = nn.BatchNorm2d(cin)
            self.relu1 = nn.ReLU(inplace=True)
            self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
            self.norm2 = nn.BatchNorm2d(bn_size * growth)
            self.relu2 = nn.ReLU(inplace=True)
            self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

        def forward(self, features):  # list of tensors, as in torchvision
            x = torch.cat(features, 1)
            x = self.conv1(self.relu1(self.norm1(x)))
            return self.conv2(self.relu2(self.norm2(x)))

    class DenseBlock(nn.ModuleDict):
        def __init__(self, n, cin, growth, bn_size):
            super().__init__()
            for i in range(n):
                self.add_module(f"denselayer{i + 1}", DenseLayer(cin + i * growth, growth, bn_size))

        def forward(self, x):
            feats = [x]
            for layer in self.values():
                feats.append(layer(feats))
            return torch.cat(feats, 1)

    class Transition(nn.Sequential):
        def __init__(self, cin, cout):
            super().__init__(
                nn.BatchNorm2d(cin), nn.ReLU(inplace=True),
                nn.Conv2d(cin, cout, 1, bias=False), nn.AvgPool2d(2, 2),
            )

    class DenseNetLike(nn.Module):
        def __init__(self, growth=12, blocks=(4, 4, 4), init=24, bn_size=4, num_classes=10):
            super().__init__()
            mods = [
                nn.Conv2d(3, init, 7, 2, 3, bias=False), nn.BatchNorm2d(init),
                nn.ReLU(inplace=True), nn.MaxPool2d(3, 2, 1),
            ]
            c = init
            for i, n in enumerate(blocks):
                mods.append(DenseBlock(n, c, growth, bn_size))
                c += n * growth
                if i != len(blocks) - 1:
                    mods.append(Transition(c, c // 2))
                    c //= 2
            mods.append(nn.BatchNorm2d(c))
            self.features = nn.Sequential(*mods)
            self.classifier = nn.Linear(c, num_classes)

        def forward(self, x):
            x = F.relu(self.features(x), inplace=True)
            x = torch.flatten(F.adaptive_avg_pool2d(x, (1, 1)), 1)
            return self.classifier(x)

    # ------------------------------------------------------------ EfficientNet
    class Swish(nn.Module):
        """x * sigmoid(x), spelled out as in EfficientNet-PyTorch's MemoryEfficientSwish export path."""

        def forward(self, x):
            return x * torch.sigmoid(x)

    class MBConv(nn.Module):
        def __init__(self, cin, cout, k, stride, expand, se_ratio=0.25):
            super().__init__()
            hidden = cin * expand
            self.use_res = stride == 1 and cin == cout
            layers = []
            if expand != 1:
                layers += [nn.Conv2d(cin, hidden, 1, bias=False), nn.BatchNorm2d(hidden), Swish()]
            layers += [
                nn.Conv2d(hidden, hidden, k, stride, k // 2, groups=hidden, bias=False),
                nn.BatchNorm2d(hidden), Swish(),
                SqueezeExcitation(hidden, max(1, int(cin * se_ratio)), act=nn.SiLU, scale_act=nn.Sigmoid),
                nn.Conv2d(hidden, cout, 1, bias=False), nn.BatchNorm2d(cout),
            ]
            self.block = nn.Sequential(*layers)

        def forward(self, x):
            y = self.block(x)
            return x + y if self.use_res else y

    class EfficientNetLike(nn.Module):
        """efficientnet_b0 layout, widths /2, fewer repeats."""

        def __init__(self, num_classes=10):
            super().__init__()
            # (expand, channels, repeats, stride, kernel)
            cfg = [(1, 8, 1, 1, 3), (6, 12, 2, 2, 3), (6, 20, 2, 2, 5), (6, 40, 2, 2, 3),
                   (6, 56, 1, 1, 5), (6, 96, 2, 2, 5), (6, 160, 1, 1, 3)]
            layers = [nn.Conv2d(3, 16, 3, 2, 1, bias=False), nn.BatchNorm2d(16), nn.SiLU()]
            cin = 16
            for t, c, n, s, k in cfg:
                for i in range(n):
                    layers.append(MBConv(cin, c, k, s if i == 0 else 1, t))
                    cin = c
            layers += [nn.Conv2d(cin, 640, 1, bias=False), nn.BatchNorm2d(640), nn.SiLU()]
            self.features = nn.Sequential(*layers)
            self.avgpool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(640, num_classes))

        def forward(self, x):
            x = torch.flatten(self.avgpool(self.features(x)), 1)
            return self.classifier(x)

    # ------------------------------------------------------------------ YOLOv8
    class YConv(nn.Module):
        """ultralytics Conv: Conv2d(bias=False) + BN + SiLU."""

        def __init__(self, c1, c2, k=1, s=1):
            super().__init__()
            self.conv = nn.Conv2d(c1, c2, k, s, k // 2, bias=False)
            self.bn = nn.BatchNorm2d(c2)
            self.act = nn.SiLU()

        def forward(self, x):
            return self.act(self.bn(self.conv(x)))

    class Bottleneck(nn.Module):
        def __init__(self, c, shortcut=True):
            super().__init__()
            self.cv1 = YConv(c, c, 3)
            self.cv2 = YConv(c, c, 3)
            self.add = shortcut

        def forward(self, x):
            y = self.cv2(self.cv1(x))
            return x + y if self.add else y

    class C2f(nn.Module):
        def __init__(self, c1, c2, n=1, shortcut=False):
            super().__init__()
            self.c = c2 // 2
            self.cv1 = YConv(c1, 2 * self.c, 1)
            self.cv2 = YConv((2 + n) * self.c, c2, 1)
            self.m = nn.ModuleList(Bottleneck(self.c, shortcut) for _ in range(n))

        def forward(self, x):
            y = list(self.cv1(x).chunk(2, 1))
            y.extend(m(y[-1]) for m in self.m)
            return self.cv2(torch.cat(y, 1))

    class SPPF(nn.Module):
        def __init__(self, c1, c2, k=5):
            super().__init__()
            c_ = c1 // 2
            self.cv1 = YConv(c1, c_, 1)
            self.cv2 = YConv(c_ * 4, c2, 1)
            self.m = nn.MaxPool2d(k, 1, k // 2)

        def forward(self, x):
            y = [self.cv1(x)]
            y.extend(self.m(y[-1]) for _ in range(3))
            return self.cv2(torch.cat(y, 1))

    class DFL(nn.Module):
        def __init__(self, c1=16):
            super().__init__()
            self.conv = nn.Conv2d(c1, 1, 1, bias=False).requires_grad_(False)
            self.conv.weight.data[:] = torch.arange(c1, dtype=torch.float).view(1, c1, 1, 1)
            self.c1 = c1

        def forward(self, x):
            b, _, a = x.shape
            return self.conv(x.view(b, 4, self.c1, a).transpose(2, 1).softmax(1)).view(b, 4, a)

    def make_anchors(feats, strides, offset=0.5):
        anchor_points, stride_tensor = [], []
        for i, stride in enumerate(strides):
            _, _, h, w = feats[i].shape
            sx = torch.arange(w, dtype=feats[i].dtype) + offset
            sy = torch.arange(h, dtype=feats[i].dtype) + offset
            sy, sx = torch.meshgrid(sy, sx, indexing="ij")
            anchor_points.append(torch.stack((sx, sy), -1).view(-1, 2))
            stride_tensor.append(torch.full((h * w, 1), stride, dtype=feats[i].dtype))
        return torch.cat(anchor_points).transpose(0, 1), torch.cat(stride_tensor).transpose(0, 1)

    class Detect(nn.Module):
        def __init__(self, nc, ch, strides=(8, 16, 32), reg_max=16, decode=True):
            super().__init__()
            self.nc, self.reg_max, self.no = nc, reg_max, nc + reg_max * 4
            self.strides, self.decode = strides, decode
            c2, c3 = max(16, ch[0] // 4, reg_max * 4), max(ch[0], min(nc, 100))
            self.cv2 = nn.ModuleList(
                nn.Sequential(YConv(x, c2, 3), YConv(c2, c2, 3), nn.Conv2d(c2, 4 * reg_max, 1)) for x in ch
            )
            self.cv3 = nn.ModuleList(
                nn.Sequential(YConv(x, c3, 3), YConv(c3, c3, 3), nn.Conv2d(c3, nc, 1)) for x in ch
            )
            self.dfl = DFL(reg_max)

        def forward(self, xs):
            xs = [torch.cat((self.cv2[i](x), self.cv3[i](x)), 1) for i, x in enumerate(xs)]
            b = xs[0].shape[0]
            x_cat = torch.cat([xi.view(b, self.no, -1) for xi in xs], 2)  # [B, no, A]
            if not self.decode:
                return x_cat
            anchors, strides = make_anchors(xs, self.strides)
            box, cls = x_cat.split((self.reg_max * 4, self.nc), 1)
            lt, rb = self.dfl(box).chunk(2, 1)
            anchors = anchors.unsqueeze(0)
            x1y1, x2y2 = anchors - lt, anchors + rb
            dbox = torch.cat(((x1y1 + x2y2) / 2, x2y2 - x1y1), 1) * strides
            return torch.cat((dbox, cls.sigmoid()), 1)  # [B, 4 + nc, A]

    class YOLOv8Like(nn.Module):
        """yolov8n layout at width 0.125-ish: backbone / PAN neck / decoupled head."""

        def __init__(self, nc=8, decode=True):
            super().__init__()
            w = (8, 16, 32, 64, 128)
            self.b0 = YConv(3, w[0], 3, 2)          # P1/2
            self.b1 = YConv(w[0], w[1], 3, 2)       # P2/4
            self.b2 = C2f(w[1], w[1], 1, True)
            self.b3 = YConv(w[1], w[2], 3, 2)       # P3/8
            self.b4 = C2f(w[2], w[2], 2, True)
            self.b5 = YConv(w[2], w[3], 3, 2)       # P4/16
            self.b6 = C2f(w[3], w[3], 2, True)
            self.b7 = YConv(w[3], w[4], 3, 2)       # P5/32
            self.b8 = C2f(w[4], w[4], 1, True)
            self.b9 = SPPF(w[4], w[4], 5)
            self.up = nn.Upsample(scale_factor=2, mode="nearest")
            self.h12 = C2f(w[4] + w[3], w[3], 1)
            self.h15 = C2f(w[3] + w[2], w[2], 1)    # P3 out
            self.h16 = YConv(w[2], w[2], 3, 2)
            self.h18 = C2f(w[2] + w[3], w[3], 1)    # P4 out
            self.h19 = YConv(w[3], w[3], 3, 2)
            self.h21 = C2f(w[3] + w[4], w[4], 1)    # P5 out
            self.detect = Detect(nc, (w[2], w[3], w[4]), decode=decode)

        def forward(self, x):
            x = self.b2(self.b1(self.b0(x)))
            p3 = self.b4(self.b3(x))
            p4 = self.b6(self.b5(p3))
            p5 = self.b9(self.b8(self.b7(p4)))
            h = self.h12(torch.cat([self.up(p5), p4], 1))
            o3 = self.h15(torch.cat([self.up(h), p3], 1))
            o4 = self.h18(torch.cat([self.h16(o3), h], 1))
            o5 = self.h21(torch.cat([self.h19(o4), p5], 1))
            return self.detect([o3, o4, o5])

    # ------------------------------------------------------------------- audio
    class WaveCNN(nn.Module):
        """M5-style raw-waveform classifier on [B, 1, 16000]."""

        def __init__(self, num_classes=12, c=32):
            super().__init__()
            self.net = nn.Sequential(
                nn.Conv1d(1, c, 80, 4), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(4),
                nn.Conv1d(c, c, 3), nn.BatchNorm1d(c), nn.ReLU(), nn.MaxPool1d(4),
                nn.Conv1d(c, 2 * c, 3), nn.BatchNorm1d(2 * c), nn.ReLU(), nn.MaxPool1d(4),
                nn.Conv1d(2 * c, 2 * c, 3), nn.BatchNorm1d(2 * c), nn.ReLU(), nn.MaxPool1d(4),
                nn.AdaptiveAvgPool1d(1),
            )
            self.fc = nn.Linear(2 * c, num_classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.net(x), 1))

    class MelCNN(nn.Module):
        """2-D CNN on a log-mel spectrogram [B, 1, 64 mels, 101 frames]."""

        def __init__(self, num_classes=12):
            super().__init__()
            self.net = nn.Sequential(
                conv_bn(1, 16), nn.MaxPool2d(2),
                conv_bn(16, 32), nn.MaxPool2d(2),
                conv_bn(32, 64), nn.MaxPool2d(2),
                conv_bn(64, 64), nn.AdaptiveAvgPool2d(1),
            )
            self.drop = nn.Dropout(0.3)
            self.fc = nn.Linear(64, num_classes)

        def forward(self, x):
            return self.fc(self.drop(torch.flatten(self.net(x), 1)))

    class TCBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.conv1 = conv_bn(cin, cout, 9, stride, dim=1)
            self.conv2 = conv_bn(cout, cout, 9, 1, act=None, dim=1)
            self.short = conv_bn(cin, cout, 1, stride, act="relu", dim=1) if (stride != 1 or cin != cout) else None

        def forward(self, x):
            s = x if self.short is None else self.short(x)
            return F.relu(self.conv2(self.conv1(x)) + s)

    class MfccTCResNet(nn.Module):
        """TC-ResNet8-style keyword spotter: MFCC coefficients are Conv1d channels, [B, 40, 101]."""

        def __init__(self, num_classes=12):
            super().__init__()
            self.stem = nn.Conv1d(40, 16, 3, 1, 1, bias=False)
            self.blocks = nn.Sequential(TCBlock(16, 24, 2), TCBlock(24, 32, 2), TCBlock(32, 48, 2))
            self.fc = nn.Linear(48, num_classes)

        def forward(self, x):
            x = self.blocks(self.stem(x))
            x = x.mean(-1)  # global average over time -> ReduceMean
            return self.fc(x)

    # -------------------------------------------------------------------- UNet
    def double_conv(cin, cout):
        return nn.Sequential(conv_bn(cin, cout), conv_bn(cout, cout))

    class UNetLike(nn.Module):
        def __init__(self, n_classes=3, base=16):
            super().__init__()
            c = [base, base * 2, base * 4, base * 8]
            self.inc = double_conv(3, c[0])
            self.down = nn.ModuleList(double_conv(c[i], c[i + 1]) for i in range(3))
            self.pool = nn.MaxPool2d(2)
            self.up = nn.ModuleList(nn.ConvTranspose2d(c[i + 1], c[i], 2, 2) for i in reversed(range(3)))
            self.dec = nn.ModuleList(double_conv(2 * c[i], c[i]) for i in reversed(range(3)))
            self.outc = nn.Conv2d(c[0], n_classes, 1)

        def forward(self, x):
            skips = [self.inc(x)]
            for d in self.down:
                skips.append(d(self.pool(skips[-1])))
            x = skips.pop()
            for up, dec in zip(self.up, self.dec):
                x = dec(torch.cat([skips.pop(), up(x)], 1))
            return self.outc(x)

    # ------------------------------------------------------------------- DBNet
    class DBNetLike(nn.Module):
        """PaddleOCR DB: small ResNet backbone -> DBFPN (Upsample + Add) -> DBHead."""

        def __init__(self, inner=64):
            super().__init__()
            self.stem = nn.Sequential(conv_bn(3, 16, 3, 2), conv_bn(16, 16), nn.MaxPool2d(3, 2, 1))
            self.s2 = nn.Sequential(BasicBlock(16, 16, 1))      # /4
            self.s3 = nn.Sequential(BasicBlock(16, 32, 2))      # /8
            self.s4 = nn.Sequential(BasicBlock(32, 64, 2))      # /16
            self.s5 = nn.Sequential(BasicBlock(64, 128, 2))     # /32
            self.in2, self.in3 = nn.Conv2d(16, inner, 1, bias=False), nn.Conv2d(32, inner, 1, bias=False)
            self.in4, self.in5 = nn.Conv2d(64, inner, 1, bias=False), nn.Conv2d(128, inner, 1, bias=False)
            q = inner // 4
            self.p5, self.p4 = nn.Conv2d(inner, q, 3, 1, 1, bias=False), nn.Conv2d(inner, q, 3, 1, 1, bias=False)
            self.p3, self.p2 = nn.Conv2d(inner, q, 3, 1, 1, bias=False), nn.Conv2d(inner, q, 3, 1, 1, bias=False)
            self.head = nn.Sequential(
                nn.Conv2d(inner, q, 3, 1, 1, bias=False), nn.BatchNorm2d(q), nn.ReLU(),
                nn.ConvTranspose2d(q, q, 2, 2), nn.BatchNorm2d(q), nn.ReLU(),
                nn.ConvTranspose2d(q, 1, 2, 2), nn.Sigmoid(),
            )

        def forward(self, x):
            c2 = self.s2(self.stem(x))
            c3 = self.s3(c2)
            c4 = self.s4(c3)
            c5 = self.s5(c4)
            in5, in4, in3, in2 = self.in5(c5), self.in4(c4), self.in3(c3), self.in2(c2)
            out4 = in4 + F.interpolate(in5, scale_factor=2, mode="nearest")
            out3 = in3 + F.interpolate(out4, scale_factor=2, mode="nearest")
            out2 = in2 + F.interpolate(out3, scale_factor=2, mode="nearest")
            p5 = F.interpolate(self.p5(in5), scale_factor=8, mode="nearest")
            p4 = F.interpolate(self.p4(out4), scale_factor=4, mode="nearest")
            p3 = F.interpolate(self.p3(out3), scale_factor=2, mode="nearest")
            p2 = self.p2(out2)
            fuse = torch.cat([p5, p4, p3, p2], 1)
            return self.head(fuse)  # shrink map [B, 1, H, W]

    # --------------------------------------------------------------------- MLP
    class MLPClassifier(nn.Module):
        def __init__(self, d_in=64):
            super().__init__()
            self.net = nn.Sequential(
                nn.Linear(d_in, 256), nn.ReLU(), nn.Dropout(0.1),
                nn.Linear(256, 128), nn.ReLU(), nn.Dropout(0.1),
                nn.Linear(128, 64), nn.ReLU(),
                nn.Linear(64, 2),
            )

        def forward(self, x):
            return self.net(x)

    # ----------------------------------------------------------------- registry
    B = {0: "batch"}
    img = [("input", ("B", 3, 64, 64))]
    specs = [
        dict(name="resnet_like", cls=ResNetLike, inputs=img, outputs=["logits"], dyn=[B]),
        dict(name="mobilenetv2_like", cls=MobileNetV2Like, inputs=img, outputs=["logits"], dyn=[B]),
        dict(name="mobilenetv3_like", cls=MobileNetV3Like, inputs=img, outputs=["logits"], dyn=[B]),
        dict(name="shufflenetv2_like", cls=ShuffleNetV2Like, inputs=img, outputs=["logits"], dyn=[B]),
        dict(name="densenet_like", cls=DenseNetLike, inputs=img, outputs=["logits"], dyn=[B]),
        dict(name="efficientnet_like", cls=EfficientNetLike, inputs=img, outputs=["logits"], dyn=[B]),
        dict(name="yolov8_like_raw", cls=lambda: YOLOv8Like(decode=False),
             inputs=[("images", ("B", 3, 128, 128))], outputs=["output0"], dyn=[B],
             note="raw head: [B, 4*16+nc, A], no DFL/anchors"),
        dict(name="yolov8_like", cls=lambda: YOLOv8Like(decode=True),
             inputs=[("images", ("B", 3, 128, 128))], outputs=["output0"], dyn=[B],
             note="ultralytics-style export: DFL softmax + anchors + dist2bbox, [B, 4+nc, A]"),
        dict(name="audio_wave1d", cls=WaveCNN, inputs=[("waveform", ("B", 1, 16000))],
             outputs=["logits"], dyn=[B], note="mono waveform, 1 input channel: expected refusal"),
        dict(name="audio_mel2d", cls=MelCNN, inputs=[("mel", ("B", 1, 64, 101))],
             outputs=["logits"], dyn=[B], note="1-channel spectrogram image"),
        dict(name="audio_mfcc1d", cls=MfccTCResNet, inputs=[("mfcc", ("B", 40, 101))],
             outputs=["logits"], dyn=[B], note="40 MFCC coeffs as Conv1d channels"),
        dict(name="unet_like", cls=UNetLike, inputs=img, outputs=["mask_logits"], dyn=[B]),
        dict(name="dbnet_like", cls=DBNetLike, inputs=[("x", ("B", 3, 64, 64))],
             outputs=["maps"], dyn=[B]),
        dict(name="dbnet_like_dynhw", cls=DBNetLike, inputs=[("x", ("B", 3, 64, 64))],
             outputs=["maps"], dyn=[{0: "batch", 2: "height", 3: "width"}],
             check_shapes=[(CHECK_BATCH, 3, 96, 128)],
             note="PaddleOCR-style dynamic H/W (multiples of 32)"),
        dict(name="mlp_classifier", cls=MLPClassifier, inputs=[("features", ("B", 64))],
             outputs=["logits"], dyn=[B]),
    ]
    return specs


def randomize_bn(torch, module):
    """Give BatchNorm layers non-trivial running stats/affine params (as a trained net has)."""
    g = torch.Generator().manual_seed(1234)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.weight.data.copy_(torch.rand(n, generator=g) * 0.5 + 0.75)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.1)


def concrete(shape, batch):
    return tuple(batch if d == "B" else d for d in shape)


def onnx_summary(path):
    import onnx

    m = onnx.load(path)
    onnx.checker.check_model(m, full_check=True)
    g = m.graph
    hist = collections.Counter(n.op_type for n in g.node)
    for f in m.functions:  # report ops inside local functions too (should be none)
        hist.update(f"{f.name}/{n.op_type}" for n in f.node)

    def vi(v):
        dims = [d.dim_param if d.HasField("dim_param") else d.dim_value for d in v.type.tensor_type.shape.dim]
        return {"name": v.name, "shape": dims}

    inits = {i.name for i in g.initializer}
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    return {
        "inputs": [vi(v) for v in g.input if v.name not in inits],
        "outputs": [vi(v) for v in g.output],
        "opset": opset,
        "nodes": len(g.node),
        "functions": len(m.functions),
        "ops": dict(sorted(hist.items())),
        "bytes": os.path.getsize(path),
    }


def check_ort(path, feeds, ref):
    import numpy as np
    import onnxruntime as ort

    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    outs = sess.run(None, feeds)
    errs = []
    for o, r in zip(outs, ref):
        if o.shape != r.shape:
            raise AssertionError(f"shape {o.shape} != torch {r.shape}")
        errs.append(float(np.max(np.abs(o - r)) / max(float(np.max(np.abs(r))), 1e-12)))
    return max(errs)


def export_one(torch, spec, exporter, path):
    model = spec["module"]
    args = tuple(torch.randn(*concrete(s, EXPORT_BATCH)) for _, s in spec["inputs"])
    in_names = [n for n, _ in spec["inputs"]]
    if exporter == "ts":
        dyn_axes = {n: d for n, d in zip(in_names, spec["dyn"])}
        for o in spec["outputs"]:
            dyn_axes[o] = {0: "batch"}
        torch.onnx.export(
            model, args, path, dynamo=False, opset_version=17,
            input_names=in_names, output_names=spec["outputs"], dynamic_axes=dyn_axes,
        )
    else:
        Dim = torch.export.Dim
        dims = {}
        dyn_shapes = []
        for d in spec["dyn"]:
            ax = {}
            for axis, nm in d.items():
                if nm not in dims:
                    dims[nm] = Dim(nm, min=1, max=4096) if nm == "batch" else 32 * Dim(nm + "_32", min=1, max=64)
                ax[axis] = dims[nm]
            dyn_shapes.append(ax)
        torch.onnx.export(
            model, args, path, dynamo=True, opset_version=18, external_data=False, verbose=False,
            input_names=in_names, output_names=spec["outputs"], dynamic_shapes=tuple(dyn_shapes),
        )


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", default=os.path.join("out", "zoo"), help="output directory (default: %(default)s)")
    ap.add_argument("--only", nargs="*", help="export only these model names")
    ap.add_argument("--exporters", nargs="*", default=["ts", "dynamo"], choices=["ts", "dynamo"],
                    help="exporters to run (default: both)")
    ap.add_argument("--list", action="store_true", help="list model names and exit")
    a = ap.parse_args(argv)

    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import torch
    except ImportError:
        sys.exit("torch is not installed: pip install 'eeonnx[torch]' (torch==2.13.0)")
    import warnings
    import logging

    warnings.filterwarnings("ignore")
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)

    specs = build_models(torch)
    if a.list:
        print("\n".join(s["name"] for s in specs))
        return 0
    if a.only:
        unknown = set(a.only) - {s["name"] for s in specs}
        if unknown:
            sys.exit(f"unknown model(s): {sorted(unknown)}")
        specs = [s for s in specs if s["name"] in a.only]
    os.makedirs(a.out, exist_ok=True)

    records = []
    for spec in specs:
        torch.manual_seed(0)
        spec["module"] = spec["cls"]().eval()
        with torch.no_grad():
            randomize_bn(torch, spec["module"])
        check_shapes = spec.get("check_shapes") or [concrete(s, CHECK_BATCH) for _, s in spec["inputs"]]
        gen = torch.Generator().manual_seed(42)
        check_in = [torch.randn(*s, generator=gen) for s in check_shapes]
        with torch.no_grad():
            ref = spec["module"](*check_in)
        ref = [r.numpy() for r in (ref if isinstance(ref, (tuple, list)) else [ref])]
        feeds = {n: t.numpy() for (n, _), t in zip(spec["inputs"], check_in)}

        for exporter in a.exporters:
            fname = f"{spec['name']}.{exporter}.onnx"
            path = os.path.join(a.out, fname)
            rec = {"file": fname, "model": spec["name"], "exporter": exporter,
                   "note": spec.get("note", ""), "export_error": None, "check_error": None}
            if os.path.exists(path):
                os.remove(path)
            try:
                with torch.no_grad():
                    export_one(torch, spec, exporter, path)
            except Exception as e:  # noqa: BLE001 -- record and move on
                rec["export_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400]}"
                rec["traceback"] = traceback.format_exc()[-4000:]
                print(f"[FAIL export] {fname}: {rec['export_error']}")
                if os.path.exists(path):
                    os.remove(path)
                records.append(rec)
                continue
            rec.update(onnx_summary(path))
            try:
                rec["rel_err"] = check_ort(path, feeds, ref)
                rec["check_shapes"] = [list(s) for s in check_shapes]
                if not rec["rel_err"] < REL_TOL:
                    rec["check_error"] = f"rel err {rec['rel_err']:.3g} >= {REL_TOL}"
            except Exception as e:  # noqa: BLE001
                rec["check_error"] = f"{type(e).__name__}: {str(e).strip().splitlines()[0][:400]}"
            status = "ok" if rec["check_error"] is None else f"CHECK FAILED ({rec['check_error']})"
            print(f"[{status}] {fname}: {rec['nodes']} nodes, opset {rec['opset']}, "
                  f"{rec['bytes'] / 1e6:.2f} MB, rel err {rec.get('rel_err', float('nan')):.2e}")
            records.append(rec)

    write_index(a.out, records)
    bad = [r for r in records if r["export_error"] or r["check_error"]]
    return 1 if any(r["check_error"] for r in bad) else 0


def write_index(out, records):
    with open(os.path.join(out, "index.json"), "w") as f:
        json.dump(records, f, indent=1)

    ok = [r for r in records if not r["export_error"]]
    usage = collections.Counter()
    for r in ok:
        usage.update({op for op in r["ops"]})
    lines = ["# eeonnx torch zoo", "",
             "Generated by `models/export_torch_zoo.py`: small randomly initialised imitations of real",
             "CNN topologies; `.ts` = TorchScript exporter (opset 17), `.dynamo` = dynamo exporter (opset 18).",
             f"Each file was run in onnxruntime CPU and compared to torch (max abs err / max |ref| < {REL_TOL}).",
             "",
             "| file | inputs | outputs | exporter | opset | nodes | size | rel err | note |",
             "|---|---|---|---|---|---|---|---|---|"]

    def shp(vs):
        return "; ".join(f"{v['name']} [{', '.join(str(d) for d in v['shape'])}]" for v in vs)

    for r in records:
        if r["export_error"]:
            lines.append(f"| {r['file']} | - | - | {r['exporter']} | - | - | - | EXPORT FAILED | {r['export_error']} |")
            continue
        err = f"{r['rel_err']:.1e}" if r.get("rel_err") is not None else "-"
        if r["check_error"]:
            err += f" FAILED: {r['check_error']}"
        lines.append(f"| {r['file']} | {shp(r['inputs'])} | {shp(r['outputs'])} | {r['exporter']} | {r['opset']} | "
                     f"{r['nodes']} | {r['bytes'] / 1e6:.2f} MB | {err} | {r['note']} |")
    lines += ["", "## Op-type histograms", ""]
    for r in ok:
        hist = ", ".join(f"{k}×{v}" for k, v in r["ops"].items())
        lines.append(f"- **{r['file']}**: {hist}")
    lines += ["", "## Op types across all exports (number of files using each)", ""]
    for op, n in sorted(usage.items(), key=lambda kv: (-kv[1], kv[0])):
        flag = "" if op in KNOWN_OPS else "  **(outside the expected list)**"
        lines.append(f"- {op}: {n}{flag}")
    extra = sorted(op for op in usage if op not in KNOWN_OPS)
    lines += ["", "## Ops outside the expected list", ""]
    if extra:
        for op in extra:
            users = [r["file"] for r in ok if op in r["ops"]]
            lines.append(f"- {op}: {', '.join(users)}")
    else:
        lines.append("none")
    fails = [r for r in records if r["export_error"] or r["check_error"]]
    lines += ["", "## Failures", ""]
    if fails:
        for r in fails:
            lines.append(f"- {r['file']}: {r['export_error'] or r['check_error']}")
    else:
        lines.append("none")
    with open(os.path.join(out, "INDEX.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
