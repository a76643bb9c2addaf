"""The block planner: which layers of a model the fast path runs together as one conv block.

A conv, the relu after it and the pool after that become one ConvBlock (the phase grid, for
narrow convs before a non-overlapping pool) or one DirectConvBlock (every other conv); every
other layer runs on its own. Direct blocks that can hand their output to the next conv in
its padded layout are chained.
"""

from engine.fast.direct_conv import DirectConvBlock, chain_blocks
from engine.fast.phase_conv import ConvBlock


def plan_blocks(layers):
    """Group a model's layers into the steps a training pass runs: a list of (first, last,
    block) where block is a ConvBlock or a DirectConvBlock for layers first..last (a conv with the
    relu and pool it absorbs), or None for a single layer run on its own (first == last).
    Direct blocks that can hand their output to the next conv in its padded layout are
    chained (engine.fast.direct_conv.chain_blocks)."""
    steps = []
    index = 0
    while index < len(layers):
        layer = layers[index]
        if layer.kind != "conv":
            steps.append((index, index, None))
            index += 1
            continue
        last = index
        relu = index + 1 < len(layers) and layers[index + 1].kind == "relu"
        if relu:
            last += 1
        following = layers[last + 1] if last + 1 < len(layers) else None
        pool_kind = {"maxpool": "max", "avgpool": "avg"}.get(following.kind) if following is not None else None
        if pool_kind == "avg" and relu:  # a mean does not commute with relu: pool on its own
            pool_kind = None
        geometry = ConvBlock.geometry_for(layer, following) if pool_kind is not None else None
        if geometry is not None:  # the phase grid takes the conv and its pool
            last += 1
            steps.append((index, last, ConvBlock(geometry, relu=relu, pool_kind=pool_kind)))
        elif pool_kind == "max":
            last += 1
            steps.append(
                (index, last, DirectConvBlock(layer.stride, layer.padding, relu, following.size, following.stride))
            )
        else:  # no pool to absorb (or an average pool the grid does not take): conv and relu
            steps.append((index, last, DirectConvBlock(layer.stride, layer.padding, relu)))
        index = last + 1
    return chain_blocks(steps, layers)
