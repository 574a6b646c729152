"""The parity check's error, apart from the check so that the bounds pass can raise one of its kind."""

from __future__ import annotations

from typing import TYPE_CHECKING

from zoo.errors import ZooError

if TYPE_CHECKING:
    from export.parity.check import ParityReport


class ParityError(ZooError):
    """The exported model does not compute the torch model's function (``.report`` says where), or its parity
    cannot be judged (``.report`` is None and the message says why: ``export.parity.bounds.BoundError``)."""

    def __init__(self, report: ParityReport | str) -> None:
        self.report = None if isinstance(report, str) else report
        super().__init__(report if isinstance(report, str) else report.explain())
