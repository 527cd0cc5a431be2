"""The one exception class of resefa_fast.

Every check on user input raises :class:`ResefaError`. It subclasses ``ValueError`` so that callers who already
catch ``ValueError`` keep working, and its message always names the argument, the value seen and what was expected.
"""


class ResefaError(ValueError):
    """Bad input to a resefa_fast function (shape, dtype, value range, or an ill-posed eigenproblem)."""


def check(condition: bool, argument: str, expected: str, got=None) -> None:
    """Raise :class:`ResefaError` naming ``argument`` unless ``condition`` holds.

    ``expected`` completes the sentence "`argument` must be ..."; ``got`` (optional) is shown after it.
    """
    if not condition:
        message = f"`{argument}` must be {expected}"
        if got is not None:
            message += f"; got {got}"
        raise ResefaError(message)
