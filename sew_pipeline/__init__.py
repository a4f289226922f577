"""sew-pipeline: SEW speech models over large audio collections on Ray."""
__version__ = "0.1.0"
