"""QR-payment vending controller: sells through a VLP/1 board, signed MQTT payments and the orders API."""

__version__ = "0.1.0"
