"""The fast engine: the core's maths, faster, behind one entry (engine.build_model(fast=True)).

conv (flat-layout conv and pool kernels on the internal (C, N, H, W) layout), phase_conv and
direct_conv (a conv with its relu and pool as one block), planner (which layers become
blocks), layers (fast twins of the layout-bound layers), partner and partner_main (a
partner process computes part of each batch), memory (malloc and BLAS tuning) and model
(the fast Model, with the core Model's public API). Tested against engine.core.
"""
