"""Errors of filtertron's data tools.

Every problem with user input (a source, a tokenizer, a prepared dataset) is a
:class:`DataError` whose message names the file and says what to do; the ``prepare`` command
prints it without a traceback. Subclasses let callers tell the cases apart.
"""


class DataError(ValueError):
    """Bad or unreadable input data, tokenizer or prepared dataset."""


class DatasetNotFoundError(DataError, FileNotFoundError):
    """A prepared dataset directory, split or file does not exist."""


class TokenizerMismatchError(DataError):
    """A dataset was tokenized with a different tokenizer than the one expected."""


class HubUnavailableError(DataError):
    """A Hugging Face hub source was asked for but the hub cannot be reached."""
