"""Datasets: the MTAN-format loaders, the synthetic scene generator and the plugin contract."""
