"""One exception tree for the domain; the API layer maps these to HTTP errors."""


class GenRecError(Exception):
    """Base of every error the project raises on purpose."""


class DataError(GenRecError):
    """Input data (interaction logs, item metadata) is missing or malformed."""


class BundleError(GenRecError):
    """A bundle directory is missing files, has an unknown format or fails its checksums."""


class UnknownItemError(GenRecError):
    """Item ids that the catalog does not know."""

    def __init__(self, item_ids):
        self.item_ids = list(item_ids)
        super().__init__(f"unknown item ids: {self.item_ids}")


class IdExhaustedError(GenRecError):
    """The diverse-ID loop could not find a free textual ID (should not happen: it has a suffix fallback)."""


class StoreUnavailableError(GenRecError):
    """The item-ID store (Redis) cannot be reached, so uniqueness cannot be guaranteed."""


class ConfigError(GenRecError):
    """A configuration value is unknown or out of range."""
