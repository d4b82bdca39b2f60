"""AdPlatform core: settings, workspace layout, the event-log schema and the error root.

The top-level packages (``features``, ``training``, ``models``, ``serving``,
``decisioning``, ``mlops``, ``simulator``) depend on this one and never on each other's
internals.
"""

from adplatform.config import Settings, get_settings
from adplatform.errors import AdPlatformError, ConfigError, DataError
from adplatform.workspace import Workspace

__all__ = ["AdPlatformError", "ConfigError", "DataError", "Settings", "Workspace", "get_settings"]
