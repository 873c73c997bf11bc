"""ganserve SDK: `from sdk import Client`."""
