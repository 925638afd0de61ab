"""Whether the service, as this environment configures it, has a model provider of its
own: `dev.sh` starts its fake model only when it has none.

It asks the service's own settings and key lookup (a key renamed by `{P}_KEY_NAME`, one
no header can carry, `ASSISTANT_PROVIDERS`), so the two never disagree; with
`SECRET_MANAGER` on, a provider's key may be there, and nothing is read to find out.
Exit status 0: a provider; 3: none (anything else: this check itself failed). A
setting that is wrong counts as a provider: the service then says what is wrong on
every request, which a fake model would hide.
"""

from __future__ import annotations

import sys

from assistant.config import ConfigError, Settings
from assistant.providers import configured_providers

NO_PROVIDER = 3  # not 1, which a Python that failed to run this exits with


def has_provider() -> bool:
    try:
        settings = Settings.from_env()
    except ConfigError as exc:
        print(f"has_provider: {exc}", file=sys.stderr)
        return True
    if settings.secret_manager:  # a key may be there; Ollama needs its URL all the same
        found = [name for name in settings.provider_order if settings.providers[name].base_url]
        skipped = {name: "no base URL" for name in settings.provider_order if name not in found}
    else:
        providers, skipped = configured_providers(settings)
        found = [provider.name for provider in providers]
    for name, why in skipped.items():  # why a key the developer set was not used
        print(f"has_provider: {name} skipped: {why}", file=sys.stderr)
    return bool(found)


if __name__ == "__main__":
    sys.exit(0 if has_provider() else NO_PROVIDER)
