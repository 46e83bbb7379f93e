"""Support for LeadFlow's own test suite (settings and helpers); not used in production."""
