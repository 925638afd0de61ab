"""Provider keys. For now from the environment; Secret Manager comes with issue #4.

A key is never logged, never put in an error and never in metadata: only its
name (`ANTHROPIC_API_KEY`) ever leaves this module.
"""

from __future__ import annotations

import os

from .config import ProviderSettings


def provider_key(settings: ProviderSettings) -> str | None:
    """The key for this provider, or None when it has none (it is then skipped)."""
    return os.environ.get(settings.key_name, "").strip() or None
