"""mucosa: computer-aided confirmation of mucosal healing from confocal laser endomicroscopy."""

from mucosa._version import __version__
