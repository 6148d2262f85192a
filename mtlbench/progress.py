"""Progress output shared by the trainer and the ``mtlbench data`` commands.

One class, three modes:

* ``rich``: live bars (rich) on a terminal;
* ``plain``: plain lines (epoch-end lines, and for counted work a line every
  ~10%), what a log file or a CI job wants;
* ``none``: nothing at all (``--quiet``).

``auto`` picks ``rich`` when stdout is a terminal and ``plain`` otherwise.

The trainer uses the epoch interface::

    prog = Progress("auto", label="okd/vit_tiny/synthetic seed 0", total_epochs=8, steps=20)
    prog.epoch_start(epoch, done=epoch); prog.step("semseg=1.02 depth=0.31")
    prog.epoch_end("epoch 1/8 loss ..."); prog.message("resuming ..."); prog.close()

counted work (data generation and checks) the counter interface::

    with Progress("auto", label="synthetic nyuv2") as p:
        p.update(done, total, name="train")     # one bar (or line series) per name
"""
from __future__ import annotations

import sys
from typing import TextIO

MODES = ("auto", "rich", "plain", "none")
_FINISHED = 1000


class Progress:
    """Rich bars on a terminal, plain lines otherwise, nothing when quiet.

    ``mode``: one of :data:`MODES`; ``quiet=True`` is ``mode="none"``.
    ``total_epochs`` / ``steps``: set up the trainer's epoch and step bars.
    ``plain_updates``: whether :meth:`update` prints its ~10% lines in plain
    mode (a check that prints its findings afterwards may not want them).
    ``stream``: where plain lines go (default stdout).
    """

    def __init__(self, mode: str = "auto", label: str = "", *, total_epochs: int | None = None,
                 steps: int | None = None, quiet: bool = False, plain_updates: bool = True,
                 stream: TextIO | None = None):
        if quiet:
            mode = "none"
        if mode not in MODES:
            raise ValueError(f"progress mode must be one of {', '.join(MODES)}, got {mode!r}")
        self._stream = stream
        if mode == "auto":
            mode = "rich" if self._out().isatty() else "plain"
        self.mode = mode
        self.label = label
        self.steps = steps
        self.plain_updates = plain_updates
        self._p = None  # the rich.progress.Progress, in rich mode
        self._ep = self._st = None
        self._bars: dict[str, int] = {}
        self._next_pct: dict[str, int] = {}
        if mode == "rich":
            from rich.progress import (BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn,
                                       TimeRemainingColumn)
            from rich.progress import Progress as RichProgress

            console = None
            if stream is not None:
                from rich.console import Console

                console = Console(file=stream)
            self._p = RichProgress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                                   TextColumn("{task.fields[info]}"), TimeElapsedColumn(),
                                   TimeRemainingColumn(), transient=False, console=console)
            self._p.start()
            if total_epochs is not None:
                self._ep = self._p.add_task(f"{label} epochs".strip(), total=total_epochs, info="")
                self._st = self._p.add_task("steps", total=steps, info="")

    def _out(self) -> TextIO:
        return self._stream if self._stream is not None else sys.stdout

    def _print(self, text: str) -> None:
        print(text, file=self._out(), flush=True)

    # -- context manager -------------------------------------------------------
    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display (idempotent)."""
        if self._p is not None:
            self._p.stop()
            self._p = None

    # -- the trainer's interface ----------------------------------------------
    def epoch_start(self, epoch: int, done: int) -> None:
        """Epoch ``epoch`` (0-based) begins; ``done`` epochs are finished."""
        if self._p is not None and self._ep is not None:
            self._p.update(self._ep, completed=done)
            self._p.reset(self._st, total=self.steps, description=f"epoch {epoch + 1}", info="")

    def step(self, info: str = "") -> None:
        """One training step done; ``info`` (e.g. the losses) is shown beside the bar."""
        if self._p is not None and self._st is not None:
            self._p.update(self._st, advance=1, info=info)

    def epoch_end(self, line: str) -> None:
        """An epoch finished: ``line`` summarises it (plain mode prints it, prefixed by the label)."""
        if self._p is not None:
            if self._ep is not None:
                self._p.update(self._ep, advance=1, info=line)
            else:
                self._p.console.print(line)
        elif self.mode == "plain":
            self._print(f"[{self.label}] {line}" if self.label else line)

    def message(self, text: str) -> None:
        """A line of text, printed above the bars (nothing when quiet)."""
        if self._p is not None:
            self._p.console.print(text)
        elif self.mode != "none":
            self._print(text)

    # -- counted work ------------------------------------------------------------
    def update(self, done: int, total: int, name: str = "") -> None:
        """``done`` of ``total`` items of ``name`` (one bar, or one series of lines, per name)."""
        desc = f"{self.label} {name}".strip()
        if self._p is not None:
            if desc not in self._bars:
                self._bars[desc] = self._p.add_task(desc, total=total, info="")
            self._p.update(self._bars[desc], completed=done, total=total)
            return
        if self.mode != "plain" or not self.plain_updates:
            return
        if done >= total:
            if self._next_pct.get(desc) != _FINISHED:  # the last line once, however often it is reported
                self._print(f"{desc}: {done}/{total}")
                self._next_pct[desc] = _FINISHED
            return
        pct = 100 * done // max(total, 1)
        if pct >= self._next_pct.get(desc, 10):
            self._print(f"{desc}: {done}/{total}")
            self._next_pct[desc] = (pct // 10 + 1) * 10
