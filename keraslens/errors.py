"""The exception family keraslens raises for problems a user can fix."""


class KeraslensError(ValueError):
    """A problem with the user's model, data or settings; the message names the fix."""
