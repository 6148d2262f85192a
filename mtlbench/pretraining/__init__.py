"""Pretraining recipes (``<name>.yaml``) for ``mtlbench pretrain``; see :mod:`mtlbench.pretrain`."""
