"""The one exception tinytlc raises for bad input: the CLI prints its message on one line."""


class TinyTLError(Exception):
    """A problem with what the user gave us (file, model, data, option), stated in one line."""
