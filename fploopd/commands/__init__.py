"""One module per ``fploopd`` command; see ``fploopd.cli``."""
