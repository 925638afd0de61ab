"""One module per provider; each speaks its own wire format natively over httpx.

`configured_providers()` turns the settings into the ordered list the chain
tries, skipping providers that have no key (or no base URL).
A new provider drops in as one module and one line in `_FACTORIES`.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import ProviderSettings, Settings
from ..keys import provider_key
from .anthropic import AnthropicProvider
from .base import Provider
from .gemini import GeminiProvider
from .ollama import OllamaProvider
from .openai import OpenAIProvider

_FACTORIES: dict[str, Callable[[ProviderSettings, str], Provider]] = {
    "anthropic": AnthropicProvider,
    "openai": OpenAIProvider,
    "gemini": GeminiProvider,
    "ollama": OllamaProvider,
}


def configured_providers(settings: Settings) -> tuple[list[Provider], dict[str, str]]:
    """(providers to try, in order; why each other provider was skipped)."""
    providers: list[Provider] = []
    skipped: dict[str, str] = {}
    for name in settings.provider_order:
        provider_settings = settings.providers[name]
        key = provider_key(provider_settings) if provider_settings.key_name else ""
        if key is None:
            skipped[name] = f"no key ({provider_settings.key_name} is not set)"
        elif not provider_settings.base_url:
            skipped[name] = f"no base URL ({name.upper()}_BASE_URL is not set)"
        else:
            providers.append(_FACTORIES[name](provider_settings, key))
    return providers, skipped
