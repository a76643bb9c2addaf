"""The partner process's entry point (see engine.fast.partner): it serves replicas of fast
models, built here, so that engine.fast.partner and engine.fast.model need not import each
other."""

import os
import signal
import sys

import numpy as np

from engine.fast.model import build_model
from engine.fast.partner import serve


def _replica(spec):
    return build_model(spec, init="zeros", seed=0, threads=1)


def main():
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl+C is for the main process; we end on EOF
    np.seterr(over="ignore", invalid="ignore")  # a diverging run is the main process's to report
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)  # anything printed by accident goes to stderr, never into the channel
    serve(sys.stdin.buffer, replies, _replica)
