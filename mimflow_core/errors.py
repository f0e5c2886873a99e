"""The one exception type that reaches a user as a single line.

Anything a user can cause (a missing file, a malformed checkpoint, a bad
argument) raises :class:`MIMFlowError` with a message that names the file or
option and the problem. The CLI prints it as one line and exits with code 2;
everything else is a bug and keeps its traceback.
"""


class MIMFlowError(Exception):
    """A problem with user input, reported as one line without a traceback."""


def one_line(text: object) -> str:
    """``text`` as one printable line, escaped where it is not: a file name may hold a newline (two lines)
    or bytes that are not UTF-8 (lone surrogates, whose printing raises UnicodeEncodeError)."""
    text = str(text)
    return text if text.isprintable() else repr(text)[1:-1]
