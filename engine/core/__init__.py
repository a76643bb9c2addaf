"""The reference engine: the textbook CNN, readable in one sitting.

kernels (named kernel patterns), initializers (the init laws), layers (im2col forward and
backward), losses, optimizers and model (spec -> a plain sequential Model). Nothing here
knows about processes, BLAS or block sizes; engine.fast computes the same maths faster and
is tested against this.
"""
