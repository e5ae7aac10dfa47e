"""mucosa: computer-aided confirmation of mucosal healing from confocal laser endomicroscopy."""

__version__ = "0.1.0"
