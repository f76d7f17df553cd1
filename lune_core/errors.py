"""The error a user sees when a model cannot be loaded: its message is meant for them."""


class ModelLoadError(RuntimeError):
    """A model could not be loaded; the message is meant for the user."""
