"""The one error class of tl_spec.

Every problem tl_spec detects in its input is raised as :class:`TLSpecError`, with a message that
says what is wrong, why, and how to fix it. It subclasses ``ValueError`` so existing
``except ValueError`` code keeps working.

>>> from tl_spec.errors import TLSpecError
>>> issubclass(TLSpecError, ValueError)
True
"""

from __future__ import annotations

__all__ = ["TLSpecError", "TLSpecWarning"]


class TLSpecError(ValueError):
    """Bad input or an unsupported model: the message says what, why and how to fix it."""


class TLSpecWarning(UserWarning):
    """Something was excluded, truncated or undefined; results are still valid but say so."""
