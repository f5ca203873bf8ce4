"""fploopd: unattended FramePack loop generation."""

__version__ = "0.1.0"
