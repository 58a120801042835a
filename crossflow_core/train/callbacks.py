"""Progress callbacks: how the training loop reports to whoever runs it (CLI, tests)."""

from __future__ import annotations

from typing import Any


class TrainCallbacks:
    """No-op base; the CLI overrides these to drive a progress bar. In a multi-process run the
    loop calls them on the main process only."""

    def on_start(self, start_step: int, total_steps: int) -> None:
        """Called once; start_step > 0 when resuming."""

    def on_step(self, step: int, total_steps: int, row: dict[str, Any]) -> None:
        """Called after every optimisation step with the loss terms of that step."""

    def on_message(self, text: str) -> None:
        """A line worth showing the user (resume, export...)."""
