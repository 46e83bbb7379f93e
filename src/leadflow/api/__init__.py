"""The management API (`/api/`), authenticated with a workspace secret key."""
