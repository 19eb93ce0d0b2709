"""ResNet-12 and ResNet-18, the residual backbones of the few-shot literature.

- `ResNet12`: the backbone of TADAM (Oreshkin et al. 2018) and MetaOptNet (Lee et al. 2019): four
  residual blocks of widths 64-160-320-640, each three [conv 3x3 -> batch norm -> LeakyReLU(0.1)]
  (no activation after the third norm), a 1x1 conv + norm shortcut, the sum, LeakyReLU(0.1) and a
  2x2 max-pool; DropBlock (Ghiasi et al. 2018) after blocks 3 and 4 and dropout after blocks 1 and
  2 when `drop_block` > 0, as MetaOptNet trains it; global average pooling gives 640 features.
- `ResNet18`: the standard ResNet-18 of He et al. 2016 as Chen et al. 2019 ("A Closer Look at
  Few-shot Classification") use it: a 7x7/2 conv and a 3x3/2 max-pool, four stages of two basic
  blocks of widths 64-128-256-512, global average pooling to 512 features. `stem="cifar"` replaces
  the stem with a 3x3/1 conv and no max-pool, for 32x32 inputs.

Both take `norm`:

- "batch_stats": `BatchStatNorm2d`, always the current batch's statistics and no running
  statistics, so the model is transductive over the batch it is given, in train and eval mode
  alike. This is the form for the MAML family, whose inner loop differentiates (twice) through the
  norms, also under `torch.func.vmap` (DESIGN.md's pitfall: a stock batch norm with its affine part
  inside `F.batch_norm` gives wrong second-order gradients under vmap).
- "batch": a standard `nn.BatchNorm2d` with running statistics (training mode normalises with the
  batch's statistics, eval mode with the running ones), for the metric family and the transfer
  baselines.

Like `Conv4`, each is `features` (an `nn.Sequential` ending in the global pool) then an optional
linear `head`: the output is the features `(n, feature_dim)` when `out_features` is None, else the
head's logits, and `model(x) == head(features(x))` (ANIL splits the model there). `features_map(x)`
gives the last block's map before the pool, `(n, feature_dim, s, s)` with `s = feature_map_size`,
and `pool=False` makes that map the output, for learners that compare feature maps (Relation
Networks).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .conv4 import BatchStatNorm2d

__all__ = ["ResNet12", "ResNet18", "DropBlock", "GlobalAvgPool", "resnet12_drop_block_size"]


def _norm(kind: str, channels: int) -> nn.Module:
    if kind == "batch_stats":
        return BatchStatNorm2d(channels)
    if kind == "batch":
        return nn.BatchNorm2d(channels)
    raise ValueError(f"norm must be 'batch_stats' or 'batch', got {kind!r}")


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    # No conv bias: the batch norm that follows removes any per-channel constant.
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


class DropBlock(nn.Module):
    """DropBlock (Ghiasi et al. 2018): drop whole `block_size` x `block_size` squares of a feature
    map, rescaling the kept values so that their expectation is unchanged.

    In training mode block centres are drawn with probability `gamma` (eq. 1 of the paper) over the
    positions where a whole block fits, so that about `rate` of the map is dropped (a little less
    where blocks overlap); the mask is per example and per channel. In eval mode it is the identity.

    Args:
        rate: the fraction of values to drop, in [0, 1).
        block_size: side of the dropped squares, at most the map's side.

    Input and output of shape (n, c, h, w).
    """

    def __init__(self, rate: float, block_size: int) -> None:
        super().__init__()
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"DropBlock rate must be in [0, 1), got {rate}")
        if block_size < 1:
            raise ValueError(f"DropBlock block_size must be >= 1, got {block_size}")
        self.rate = rate
        self.block_size = block_size

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or self.rate == 0.0:
            return x
        n, c, h, w = x.shape
        b = min(self.block_size, h, w)
        valid_h, valid_w = h - b + 1, w - b + 1
        gamma = self.rate / (b * b) * (h * w) / (valid_h * valid_w)
        seeds = torch.rand(n, c, valid_h, valid_w, device=x.device) < gamma
        # Grow each seed into a b x b block: pad the seeds back to (h + b - 1) so a max-pool of
        # window b and stride 1 lands on (h, w), covering the block whose top-left is the seed.
        seeds = F.pad(seeds.to(x.dtype), (b - 1, b - 1, b - 1, b - 1))
        dropped = F.max_pool2d(seeds, b, stride=1)
        keep = 1.0 - dropped
        kept = keep.sum()
        scale = keep.numel() / kept.clamp_min(1.0)
        return x * keep * scale

    def extra_repr(self) -> str:
        return f"rate={self.rate}, block_size={self.block_size}"


class GlobalAvgPool(nn.Module):
    """The mean over the spatial dimensions: (n, c, h, w) -> (n, c)."""

    def forward(self, x: Tensor) -> Tensor:
        return x.mean((2, 3))


def resnet12_drop_block_size(image_size: int) -> int:
    """DropBlock's block size for a ResNet-12 on `image_size` inputs: MetaOptNet's 5 at 84x84
    (where block 4's map is 5x5), scaled with the input (2 at 32x32, MetaOptNet's CIFAR-FS
    value), at least 1."""
    return max(1, round(5 * image_size / 84))


class _ResNet(nn.Module):
    """What both ResNets share: `features` (the blocks, then the global pool or, with pool=False,
    nothing), an optional linear `head`, He initialisation and the memory layout (see the module)."""

    def _finish(
        self,
        layers: list[nn.Module],
        pool: bool,
        feature_dim: int,
        feature_map_size: int,
        out_features: int | None,
        nonlinearity: str,
        channels_last: bool,
    ) -> None:
        """Set `features`, `feature_dim`, `feature_map_size` and `head`, initialise the weights for
        `nonlinearity`, and take the channels-last layout if asked."""
        self.features = nn.Sequential(*layers, GlobalAvgPool() if pool else nn.Identity())
        self.feature_dim = feature_dim
        self.feature_map_size = feature_map_size
        self.head = nn.Linear(self.feature_dim, out_features) if out_features else None
        _init_weights(self, nonlinearity)
        self.channels_last = channels_last
        if channels_last:
            self.to(memory_format=torch.channels_last)

    def features_map(self, x: Tensor) -> Tensor:
        """The last block's map before the global pool, (n, feature_dim, s, s)."""
        return self.features[:-1](x)

    def forward(self, x: Tensor) -> Tensor:
        z = self.features(x)
        return self.head(z) if self.head is not None else z


class _ResNet12Block(nn.Module):
    """One ResNet-12 block: 3x [conv 3x3 -> norm -> LeakyReLU(0.1)] without the last activation, a
    1x1 conv + norm shortcut, sum, LeakyReLU(0.1), 2x2 max-pool, then dropout or DropBlock."""

    def __init__(self, cin: int, cout: int, norm: str, drop: nn.Module | None) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout), _norm(norm, cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), _norm(norm, cout)
        self.conv3, self.bn3 = _conv3x3(cout, cout), _norm(norm, cout)
        self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), _norm(norm, cout))
        self.drop = drop

    def forward(self, x: Tensor) -> Tensor:
        out = F.leaky_relu(self.bn1(self.conv1(x)), 0.1)
        out = F.leaky_relu(self.bn2(self.conv2(out)), 0.1)
        out = self.bn3(self.conv3(out))
        out = F.leaky_relu(out + self.shortcut(x), 0.1)
        out = F.max_pool2d(out, 2)
        return self.drop(out) if self.drop is not None else out


class ResNet12(_ResNet):
    """ResNet-12 (TADAM, MetaOptNet) with an optional linear head.

    Args:
        in_channels: 3 for colour images.
        widths: the four blocks' widths; the last is `feature_dim` (640).
        out_features: size of a linear head on the features (N for an N-way classifier); None
            leaves the features as the output.
        norm: "batch_stats" (always the batch's statistics, transductive: the MAML family) or
            "batch" (`nn.BatchNorm2d` with running statistics: metric learners, baselines).
        drop_block: the drop rate, 0 for none. When > 0, as MetaOptNet: dropout at this rate after
            blocks 1 and 2, DropBlock at this rate after blocks 3 and 4 with block size
            `resnet12_drop_block_size(image_size)` (5 at 84x84), at most the map's side.
        image_size: input height/width: sizes DropBlock's blocks and `feature_map_size`; at least
            16 (four 2x2 max-pools).
        pool: end with the global average pool (features of shape (n, feature_dim)); False
            leaves the last block's map, (n, feature_dim, s, s), as the output (no head then).
        channels_last: keep the weights in the channels-last memory layout.

    Input of shape (n, in_channels, image_size, image_size) -> (n, out_features) or (n, feature_dim).

    References:
        Oreshkin et al. 2018, "TADAM: Task dependent adaptive metric for improved few-shot learning";
        Lee et al. 2019, "Meta-Learning with Differentiable Convex Optimization" (MetaOptNet);
        Ghiasi et al. 2018, "DropBlock: A regularization method for convolutional networks".
    """

    def __init__(
        self,
        in_channels: int = 3,
        widths: Sequence[int] = (64, 160, 320, 640),
        out_features: int | None = None,
        norm: str = "batch",
        drop_block: float = 0.0,
        image_size: int = 84,
        pool: bool = True,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"ResNet12 takes four widths, got {tuple(widths)}")
        if image_size < 16:
            raise ValueError(
                f"ResNet12 needs images of at least 16x16 (four 2x2 max-pools), got {image_size}"
            )
        if not 0.0 <= drop_block < 1.0:
            raise ValueError(f"drop_block must be in [0, 1), got {drop_block}")
        _norm(norm, 1)  # check the name
        if not pool and out_features:
            raise ValueError("a head needs pooled features: pool=False takes out_features=None")
        blocks: list[nn.Module] = []
        cin, size = in_channels, image_size
        block = resnet12_drop_block_size(image_size)
        for i, cout in enumerate(widths):
            size //= 2
            drop: nn.Module | None = None
            if drop_block > 0:
                drop = nn.Dropout(drop_block) if i < 2 else DropBlock(drop_block, min(block, size))
            blocks.append(_ResNet12Block(cin, cout, norm, drop))
            cin = cout
        self._finish(blocks, pool, widths[-1], size, out_features, "leaky_relu", channels_last)


class _BasicBlock(nn.Module):
    """He et al.'s basic block: conv 3x3 (stride) -> norm -> ReLU -> conv 3x3 -> norm, plus the
    input (through a 1x1 conv + norm when the shape changes), then ReLU."""

    def __init__(self, cin: int, cout: int, stride: int, norm: str) -> None:
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, cout, stride), _norm(norm, cout)
        self.conv2, self.bn2 = _conv3x3(cout, cout), _norm(norm, cout)
        self.shortcut = (
            nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), _norm(norm, cout))
            if stride != 1 or cin != cout
            else None
        )

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + (self.shortcut(x) if self.shortcut is not None else x))


def _conv_out(size: int, kernel: int, stride: int, padding: int) -> int:
    return (size + 2 * padding - kernel) // stride + 1


class ResNet18(_ResNet):
    """ResNet-18 (He et al. 2016, as in Chen et al. 2019) with an optional linear head.

    Args:
        in_channels: 3 for colour images.
        out_features: size of a linear head on the features; None leaves the features as output.
        norm: "batch_stats" (always the batch's statistics, transductive: the MAML family) or
            "batch" (`nn.BatchNorm2d` with running statistics: metric learners, baselines).
        stem: "imagenet" (7x7/2 conv, norm, ReLU, 3x3/2 max-pool: for 84x84 and larger) or "cifar"
            (3x3/1 conv, norm, ReLU, no pool: for 32x32).
        image_size: input height/width, to compute `feature_map_size`.
        widths: the four stages' widths; the last is `feature_dim` (512).
        pool: end with the global average pool; False leaves the last stage's map as the output.
        channels_last: keep the weights in the channels-last memory layout.

    Input of shape (n, in_channels, image_size, image_size) -> (n, out_features) or (n, feature_dim).

    References:
        He et al. 2016, "Deep Residual Learning for Image Recognition";
        Chen et al. 2019, "A Closer Look at Few-shot Classification".
    """

    def __init__(
        self,
        in_channels: int = 3,
        out_features: int | None = None,
        norm: str = "batch",
        stem: str = "imagenet",
        image_size: int = 84,
        widths: Sequence[int] = (64, 128, 256, 512),
        pool: bool = True,
        channels_last: bool = False,
    ) -> None:
        super().__init__()
        if len(widths) != 4:
            raise ValueError(f"ResNet18 takes four widths, got {tuple(widths)}")
        _norm(norm, 1)
        if stem == "imagenet":
            stem_layers = nn.Sequential(
                nn.Conv2d(in_channels, widths[0], 7, stride=2, padding=3, bias=False),
                _norm(norm, widths[0]),
                nn.ReLU(),
                nn.MaxPool2d(3, stride=2, padding=1),
            )
            size = _conv_out(_conv_out(image_size, 7, 2, 3), 3, 2, 1)
        elif stem == "cifar":
            stem_layers = nn.Sequential(_conv3x3(in_channels, widths[0]), _norm(norm, widths[0]), nn.ReLU())
            size = image_size
        else:
            raise ValueError(f"stem must be 'imagenet' or 'cifar', got {stem!r}")
        if size < 1:
            raise ValueError(
                f"ResNet18 with the {stem} stem needs larger images than {image_size}x{image_size}"
            )
        if not pool and out_features:
            raise ValueError("a head needs pooled features: pool=False takes out_features=None")
        layers: list[nn.Module] = [stem_layers]
        cin = widths[0]
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            layers += [_BasicBlock(cin, cout, stride, norm), _BasicBlock(cout, cout, 1, norm)]
            cin = cout
            if stride == 2:
                size = _conv_out(size, 3, 2, 1)
        self.stem = stem
        self._finish(layers, pool, widths[-1], size, out_features, "relu", channels_last)


def _init_weights(model: nn.Module, nonlinearity: str) -> None:
    """He initialisation of the convolutions (fan-out, as both papers' code), norms at 1 and 0."""
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            if nonlinearity == "leaky_relu":
                nn.init.kaiming_normal_(m.weight, a=0.1, mode="fan_out", nonlinearity="leaky_relu")
            else:
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, (nn.BatchNorm2d, BatchStatNorm2d)):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)
