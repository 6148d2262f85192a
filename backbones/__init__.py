"""Built-in backbone plugins; each module registers itself in ``mtlbench.registry.BACKBONES``."""
