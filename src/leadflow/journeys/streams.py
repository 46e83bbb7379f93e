"""PLACEHOLDER: being written; replaced before this lands."""
