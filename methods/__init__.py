"""Built-in method plugins; each module registers itself in ``mtlbench.registry.METHODS``."""
