"""A backbone's blocks, bottom to top: the units that gradual unfreezing trains one after another.

One rule for torchvision, timm and EfficientNet-Lite models, from the module tree alone:
    1. the backbone's top-level children that hold parameters, in registration order (input to output);
    2. a block made only of normalisation layers joins the block before it (ResNet's conv1 + bn1);
    3. while there are fewer than MIN_BLOCKS blocks, the largest one that is a Sequential or ModuleList (of two or
       more children with parameters) is split into its children (torchvision's `features`, timm's `blocks` and
       `stages`, EfficientNet-Lite's `_blocks`).
ResNet: stem, layer1..layer4; MobileNetV3: features.0..N and the pre-logits layer; EfficientNet-Lite0: stem,
_blocks.0..15, head convolution; timm EfficientNet: stem, blocks.0..6, head convolution; ConvNeXt: stem,
stages.0..3 (with the final norm).
"""
from __future__ import annotations

from torch import nn

MIN_BLOCKS = 4
_NORMS = (nn.modules.batchnorm._NormBase, nn.LayerNorm, nn.GroupNorm)


def backbone_blocks(backbone: nn.Module) -> list[tuple[str, nn.ModuleList]]:
    """(name, modules) per block, bottom to top; every parameter of `backbone` is in exactly one block (any
    parameter held directly by a container goes to the bottom block)."""
    blocks = _join_norms([[(name, child)] for name, child in _with_parameters(backbone)])
    while len(blocks) < MIN_BLOCKS:
        splittable = [k for k, block in enumerate(blocks) if isinstance(block[0][1], (nn.Sequential, nn.ModuleList))
                      and len(_with_parameters(block[0][1])) > 1]
        if not splittable:
            break
        i = max(splittable, key=lambda k: _size(blocks[k]))
        name, first = blocks[i][0]
        split = [[(f"{name}.{n}", m)] for n, m in _with_parameters(first)]
        split[-1] += blocks[i][1:]   # norms joined to the container stay at its top
        blocks = _join_norms(blocks[:i] + split + blocks[i + 1:])
    out = [("+".join(n for n, _ in block), nn.ModuleList([m for _, m in block])) for block in blocks]
    inside = {id(p) for _, modules in out for p in modules.parameters()}
    loose = [p for p in backbone.parameters() if id(p) not in inside]
    if loose:
        if not out:
            out = [("backbone", nn.ModuleList())]
        out[0][1].insert(0, nn.ParameterList(loose))   # the same Parameter objects, not copies
    return out


def _with_parameters(module: nn.Module) -> list[tuple[str, nn.Module]]:
    return [(name, child) for name, child in module.named_children() if any(True for _ in child.parameters())]


def _size(block: list[tuple[str, nn.Module]]) -> int:
    return sum(p.numel() for _, m in block for p in m.parameters())


def _norm_only(block: list[tuple[str, nn.Module]]) -> bool:
    holders = [m for _, module in block for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
    return bool(holders) and all(isinstance(m, _NORMS) for m in holders)


def _join_norms(blocks: list[list]) -> list[list]:
    out: list[list] = []
    for block in blocks:
        if out and _norm_only(block):
            out[-1] = out[-1] + block
        else:
            out.append(block)
    return out
