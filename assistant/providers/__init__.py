"""One module per provider; each speaks its own wire format natively over httpx.

`configured_providers()` turns the settings into the ordered list the chain
tries, skipping providers that have no key (or no base URL).
A new provider is a module, a line in `_FACTORIES`, and its name, default base
URL and model and highest temperature in config.py.
"""

from __future__ import annotations

from collections.abc import Callable

from ..config import ProviderSettings, Settings, shown_key_name
from ..keys import key_store, provider_key
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
        key = provider_key(settings, provider_settings)
        if key is None:
            key_name = shown_key_name(provider_settings.key_name)
            skipped[name] = f"no usable key ({key_name} unset, or refused: see secret.* lines)"
        elif not provider_settings.base_url:
            skipped[name] = f"no base URL ({name.upper()}_BASE_URL is not set)"
        else:
            providers.append(_FACTORIES[name](provider_settings, key))
    return providers, skipped


def with_fresh_key(settings: Settings, provider: Provider) -> Provider | None:
    """After a 401: the same provider with its key read again, or None if it did not change.

    Blocking (it may call Secret Manager): the chain runs it off the I/O loop.
    """
    if not provider.settings.key_name:
        return None
    key = key_store(settings).refresh(provider.settings.key_name)
    if not key or key == provider.api_key:
        return None
    return _FACTORIES[provider.name](provider.settings, key)
