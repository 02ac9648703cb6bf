"""Data: built-in corpora and generated toy tasks."""
