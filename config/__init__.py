"""Settings from the environment and the sources file."""

from config.settings import Settings, get_settings
from config.sources import SourceConfig, load_sources

__all__ = ["Settings", "SourceConfig", "get_settings", "load_sources"]
