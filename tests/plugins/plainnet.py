"""A user's own weight-sharing CNN written in plain PyTorch: no bitnas layer classes, no layer list.

What the adapter needs of it is ``space`` and ``extract(candidate) -> nn.Module``; bitnas derives the
layers from the exported graph. ``SUPERNET`` is what a project names (``tests.plugins.plainnet:SUPERNET``).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from bitnas.space import Gene, SearchSpace

STAGES = ((16, 2), (24, 2))  # (max width, stride of the first block)
WIDTHS = ((8, 16), (12, 24))
DEPTHS = (1, 2)


def make_space() -> SearchSpace:
    genes = []
    for s in range(len(STAGES)):
        genes += [Gene(f"s{s}.width", WIDTHS[s]), Gene(f"s{s}.depth", DEPTHS)]
    return SearchSpace("plainnet", genes, "a user's plain-PyTorch elastic CNN: width and depth per stage")


class Block(nn.Module):
    """3x3 conv, BN, ReLU6, 1x1 conv, BN, and the identity added when shapes allow."""

    def __init__(self, cin: int, cout: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.act = nn.ReLU6()
        self.conv2 = nn.Conv2d(cout, cout, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.residual = stride == 1 and cin == cout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.bn2(self.conv2(self.act(self.bn1(self.conv1(x)))))
        return x + y if self.residual else y


class Subnet(nn.Module):
    def __init__(self, stem: nn.Conv2d, stem_bn: nn.BatchNorm2d, stages: list[list[Block]], fc: nn.Linear):
        super().__init__()
        self.stem, self.stem_bn = stem, stem_bn
        self.stages = nn.Sequential(*[nn.Sequential(*blocks) for blocks in stages])
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        x = self.stages(x)
        return self.fc(torch.flatten(self.pool(x), 1))


def _sliced_conv(conv: nn.Conv2d, cin: int, cout: int) -> nn.Conv2d:
    out = nn.Conv2d(cin, cout, conv.kernel_size, conv.stride, conv.padding, bias=False)
    out.weight.data.copy_(conv.weight.data[:cout, :cin])
    return out


def _sliced_bn(bn: nn.BatchNorm2d, c: int) -> nn.BatchNorm2d:
    out = nn.BatchNorm2d(c)
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(out, name).data.copy_(getattr(bn, name).data[:c])
    return out


class PlainSupernet(nn.Module):
    """Shared weights: a subnet takes the leading channels and the first blocks of every stage."""

    input_shape = (1, 16, 16)

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.space = make_space()
        self.stem = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        self.stem_bn = nn.BatchNorm2d(16)
        blocks, cin = [], 16
        for cmax, stride in STAGES:
            blocks.append(nn.ModuleList([Block(cin if b == 0 else cmax, cmax, stride if b == 0 else 1)
                                         for b in range(max(DEPTHS))]))
            cin = cmax
        self.blocks = nn.ModuleList(blocks)
        self.fc = nn.Linear(cin, num_classes)

    def _plan(self, arch: dict) -> list[list[tuple[Block, int, int]]]:
        plan, cin = [], 16
        for s in range(len(STAGES)):
            w = arch[f"s{s}.width"]
            plan.append([(self.blocks[s][b], cin if b == 0 else w, w) for b in range(arch[f"s{s}.depth"])])
            cin = w
        return plan

    def forward(self, x: torch.Tensor, arch: dict) -> torch.Tensor:
        """The dynamic forward training uses: the subnet of ``arch`` on the shared weights."""
        x = F.relu(self.stem_bn(self.stem(x)))
        for stage in self._plan(arch):
            for blk, cin, w in stage:
                y = F.conv2d(x, blk.conv1.weight[:w, :cin], None, blk.conv1.stride, 1)
                y = F.batch_norm(y, blk.bn1.running_mean[:w], blk.bn1.running_var[:w], blk.bn1.weight[:w],
                                 blk.bn1.bias[:w], self.training)
                y = F.conv2d(F.relu6(y), blk.conv2.weight[:w, :w])
                y = F.batch_norm(y, blk.bn2.running_mean[:w], blk.bn2.running_var[:w], blk.bn2.weight[:w],
                                 blk.bn2.bias[:w], self.training)
                x = x + y if (blk.conv1.stride == (1, 1) and cin == w) else y
        x = torch.flatten(F.adaptive_avg_pool2d(x, 1), 1)
        return F.linear(x, self.fc.weight[:, :x.shape[1]], self.fc.bias)

    @torch.no_grad()
    def extract(self, candidate) -> nn.Module:
        """A plain static module with the candidate's inherited weights."""
        stages = []
        for stage in self._plan(candidate.arch_dict):
            blocks = []
            for blk, cin, w in stage:
                b = Block(cin, w, blk.conv1.stride[0])
                b.conv1, b.bn1 = _sliced_conv(blk.conv1, cin, w), _sliced_bn(blk.bn1, w)
                b.conv2, b.bn2 = _sliced_conv(blk.conv2, w, w), _sliced_bn(blk.bn2, w)
                blocks.append(b)
            stages.append(blocks)
        last = stages[-1][-1].conv2.out_channels
        fc = nn.Linear(last, self.fc.out_features)
        fc.weight.data.copy_(self.fc.weight.data[:, :last])
        fc.bias.data.copy_(self.fc.bias.data)
        stem = nn.Conv2d(1, 16, 3, 1, 1, bias=False)
        stem.weight.data.copy_(self.stem.weight.data)
        return Subnet(stem, _sliced_bn(self.stem_bn, 16), stages, fc).eval()


def train_sandwich(net: PlainSupernet, x: np.ndarray, y: np.ndarray, epochs: int, seed: int = 0) -> None:
    """The user's own training loop: largest and smallest subnet every step."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    opt = torch.optim.SGD(net.parameters(), lr=0.05, momentum=0.9)
    archs = [net.space.largest().arch_dict, net.space.smallest().arch_dict]
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).long()
    net.train()
    for _ in range(epochs):
        order = rng.permutation(len(xt))
        for i in range(0, len(order), 64):
            idx = order[i:i + 64]
            opt.zero_grad()
            for arch in archs:
                F.cross_entropy(net(xt[idx], arch), yt[idx]).backward()
            opt.step()
    net.eval()


SUPERNET = PlainSupernet()
