"""The one exception type of ``model_train``.

Everything in the package raises ``TrainError`` with an "expected X, got Y" message; the command-line
entry points (``train.main``, ``eval.main``, ``data.main``) translate it into a one-line message on stderr
and exit status 2.
"""

from __future__ import annotations


class TrainError(Exception):
    """A training, data or evaluation step could not go on; the message says what was expected."""
