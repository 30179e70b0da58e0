"""invitation-gateway: Acrobits invitation callbacks in, deliveries to the provider's targets out."""

__version__ = "0.1.0"
__all__ = ["__version__"]
