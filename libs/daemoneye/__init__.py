"""DaemonEye: an offline-first endpoint process monitor."""

__version__ = "0.1.0"
