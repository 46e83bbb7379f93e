"""LeadFlow: self-hosted lead nurturing and retention."""

__version__ = "0.1.0"
