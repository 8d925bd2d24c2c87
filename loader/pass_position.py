"""Where a ``StreamLoader`` is: the epoch, the batches of it handed on, and which pass is current.

DataLoader semantics, as ``StreamLoader`` keeps them:

* Every ``iter()`` starts a pass. The first pass after ``load_state_dict`` resumes at the
  saved position; any other starts at batch 0. (After ``set_epoch``, a look at one batch taken
  as that first pass puts the position back: see :meth:`PassPosition.new_iter`.)
* The epoch advances as a pass hands on the epoch's last batch, so a state taken then
  resumes at the next epoch. After ``set_epoch`` the epoch no longer advances by itself
  (as with ``DistributedSampler``): its caller chooses the next one, and a state taken
  after the last batch says that epoch is over.
* ``set_epoch(e)`` takes effect at once: the next pass, a state taken now and ``loader.dataset``
  are epoch ``e``'s. If a pass of another epoch then hands on another batch (Lightning takes an
  index-free loader's first batch before it sets the epoch), that pass keeps its epoch: its
  batches and a state taken part-way are that epoch's (the state names ``e`` as the next),
  ``e`` begins where it ends, and a warning says so. A pass that hands on nothing more (left,
  or kept alive and not read: Lightning's ``limit_train_batches``) leaves ``e`` as it was set.
* A pass left part-way (its iterator dropped or still open) stays *open*: the next
  ``iter()`` advances the epoch (each ``iter()`` of a shuffled DataLoader is a new
  shuffle), while ``batches_done`` keeps where it was left, so a state taken in between
  resumes there (torchdata's ``StatefulDataLoader`` does the same).
* One pass runs at a time: each pass gets a serial number, and a pass that is no longer
  the newest raises (:meth:`PassPosition.check_current`) instead of sharing the workers. A
  pass starts at its first ``next()``, not at ``iter()``, so an iterator made and never
  used changes nothing. A pass running when ``close()`` stops the workers raises too,
  rather than end short as if its epoch were over.
"""
from __future__ import annotations

import warnings
from collections.abc import Callable


LOOK_BATCHES = 1         # the most a look (see PassPosition.new_iter) hands on: next(iter(loader)) takes one
# what a look puts back when it is over
LOOK_FIELDS = ("epoch", "batches_done", "ended", "open_pass", "resume_pending", "explicit_epoch", "next_epoch",
               "resumed_at", "running", "running_moves")


class PassPosition:
    def __init__(self):
        self.epoch = 0
        self.explicit_epoch = False       # set_epoch was called: epochs no longer advance by themselves
        self.batches_done = 0             # of the epoch, handed on
        self.resume_pending = False       # load_state_dict set the position; the next pass starts there
        self.serial = 0                   # the current pass's number (see check_current)
        self.open_pass: int | None = None  # an iter() pass begun and not at its end (left or running)
        self.ended = False                # set_epoch's epoch handed on its last batch (its length is now known)
        self.closed_pass: tuple = ()          # the passes close() stopped while they ran (see check_current)
        self.ended_pass: int | None = None    # the pass that handed on its epoch's last batch
        self.forked_pass: int | None = None   # in a forked child: the parent's pass then (its workers are the parent's)
        self.moved_pass: int | None = None    # the pass open when load_state_dict moved the position
        self.next_epoch: int | None = None    # set_epoch while another epoch's pass ran on: the epoch after it
        self.resumed_at: tuple[int, int] | None = None   # (epoch, batch) load_state_dict restored, until it moves on
        self.running: int | None = None       # the pass whose iterator is alive (begun, not yet finished or dropped)
        self.running_moves = 0                # moves when it began
        self.moves = 0                        # load_state_dict, set_epoch to another epoch, close(): see can_resume
        self.looks: list[tuple] = []          # (serial, the position before it, moves) of each look (see new_iter)
        self._pending_look: tuple | None = None

    def set_epoch(self, epoch: int) -> None:
        epoch = int(epoch)
        named, self.next_epoch = self.next_epoch, None
        if epoch != self.epoch:
            if self.resume_pending and self.batches_done and not self.ended:
                why = (f"The state was saved while a pass of epoch {self.epoch} went on after set_epoch({epoch})"
                       if epoch == named else
                       "The caller's epoch count differs from the one the state was saved at (Lightning's does "
                       "when resuming a run that max_steps stopped mid-epoch: see docs/training.md)")
                warnings.warn(
                    f"set_epoch({epoch}) replaces the position load_state_dict() restored, {self.batches_done} "
                    f"batches into epoch {self.epoch}: the rest of epoch {self.epoch} is not read, and epoch {epoch} "
                    f"starts at its first batch. {why}; call set_epoch({self.epoch}) to resume where the state was "
                    f"saved", UserWarning, stacklevel=caller_stacklevel())
            self.batches_done, self.resume_pending, self.ended, self.resumed_at = 0, False, False, None
            self.moves += 1
        self.epoch, self.explicit_epoch = epoch, True

    def keep_pass_epoch(self, serial: int, epoch: int, done: int) -> None:
        """Pass ``serial``, of ``epoch``, with ``done`` batches of it handed on, hands on another.
        If ``set_epoch`` chose another epoch while it ran, the pass keeps its own and the chosen
        one begins where it ends (see the module's docstring): the position is the pass's again."""
        if self.epoch == epoch or serial != self.serial or serial != self.open_pass:
            return
        chosen = self.epoch
        self.epoch, self.batches_done, self.next_epoch, self.ended = epoch, done, chosen, False
        warnings.warn(
            f"set_epoch({chosen}) was called while a pass of epoch {epoch} ran, and the pass goes on: its "
            f"batches stay epoch {epoch}'s (a state taken now names it), and epoch {chosen} begins where it "
            f"ends. Call set_epoch before iter(loader). Lightning takes a batch before it sets the epoch (at "
            f"fit()'s first epoch, and a resumed one) when the loader has no len(): give it an index "
            f"(`streamaug index <shards>`), and Lightning sets the epoch first", UserWarning,
            stacklevel=caller_stacklevel())

    def _start_next_epoch(self) -> bool:
        """The epoch ``set_epoch`` chose while a pass ran, now that the pass is over."""
        if self.next_epoch is None:
            return False
        self.epoch, self.next_epoch = self.next_epoch, None
        self.batches_done, self.ended = 0, False
        return True

    def restore(self, epoch: int, batches_done: int, explicit_epoch: bool, ended: bool = False,
                next_epoch: int | None = None) -> None:
        """A saved position; the next pass resumes there."""
        self._leave_open_pass()
        self.epoch, self.batches_done, self.explicit_epoch = epoch, batches_done, explicit_epoch
        self.ended, self.next_epoch = ended, next_epoch
        self.resume_pending = True
        self.resumed_at = (epoch, batches_done)
        self.moves += 1

    def _leave_open_pass(self) -> None:
        """A state was loaded under an open pass: were it still running, its next batch would
        count on the loaded position (a state then named batches it never handed on), so it
        raises there instead (see :meth:`check_current`)."""
        if self.open_pass is not None:
            self.moved_pass = self.open_pass

    def new_iter(self) -> None:
        """An ``iter()``: a pass left part-way before it makes this one the next epoch's, or,
        after ``set_epoch``, reads the epoch again from its start.

        A pass begun while another runs (nothing moved the position since that one began), or,
        after ``set_epoch``, once its epoch is over or a state was restored, may be a *look* (``next(iter(loader))`` in a
        callback that logs images): if its iterator is dropped after at most ``LOOK_BATCHES``
        batches, the position is put back as it was before it (:meth:`finish`), so a state taken
        then, and the loop's next batch or pass, are as if it had not been taken."""
        watched = (self.running is not None and self.running_moves == self.moves) or (
            self.explicit_epoch and self.open_pass is None and (self.ended or self.resume_pending))
        self._pending_look = ({f: getattr(self, f) for f in LOOK_FIELDS}, self.moves) if watched else None
        if self.open_pass is not None and not self.resume_pending and not self._start_next_epoch():
            resumed = self.resumed_at is not None and self.resumed_at[0] == self.epoch
            if resumed and not self.explicit_epoch:
                warnings.warn(
                    f"iter(loader) starts epoch {self.epoch + 1}: the pass that resumed epoch {self.epoch} at batch "
                    f"{self.resumed_at[1]} (load_state_dict) was left after {self.batches_done - self.resumed_at[1]} "
                    f"batches, so the rest of epoch {self.epoch} is not read, as a DataLoader's next iter() is a "
                    f"new epoch. If that pass was a look at a batch (next(iter(loader))), call set_epoch"
                    f"({self.epoch}) before this iter() to read epoch {self.epoch} from batch {self.resumed_at[1]}, "
                    f"or take the look before load_state_dict", UserWarning, stacklevel=caller_stacklevel())
            self.advance()
        self.open_pass = None             # that pass is accounted for

    def begin(self, start: int | None, num_batches: Callable[[int], int | None],
              open_until_end: bool) -> tuple[int, int] | None:
        """Start a pass at batch ``start`` (``None``: 0, or the resume point) of the current epoch,
        whose length ``num_batches(epoch)`` gives (``None``: unknown, unless the epoch was handed
        on to its end). Returns ``(start, serial)``, or ``None`` when nothing is left (``set_epoch``'s
        epoch was resumed after its end). ``open_until_end``: the pass counts as open (see
        :meth:`new_iter`) until it ends."""
        look, self._pending_look = self._pending_look, None
        pending = self.resume_pending
        if start is None:
            start = self.batches_done if self.resume_pending else 0
        self.resume_pending = False
        total = num_batches(self.epoch)
        if total is None and self.ended:
            total = self.batches_done
        self.ended = False
        if total is not None and start >= total:       # a state taken after the epoch's last batch
            if self.explicit_epoch:       # set_epoch's epoch is over: nothing is left of it, for this pass
                self.batches_done, self.resume_pending = start, pending     # or the next (a look's, say)
                if look is not None:
                    self._put_back(look[0])
                return None
            self.advance()
            start = 0
        self.batches_done = start
        self.serial += 1
        if look is not None:
            self.looks.append((self.serial, *look))
        self.running, self.running_moves = self.serial, self.moves
        if open_until_end:
            self.open_pass = self.serial
        return start, self.serial

    def finish(self, serial: int, at_end: bool, handed: int) -> bool:
        """Pass ``serial``'s iterator is over: ended (``at_end``), closed or dropped, having handed
        on ``handed`` batches. A look (see :meth:`new_iter`) dropped after at most
        ``LOOK_BATCHES``, that nothing came after but looks already put back, puts the position
        back as it was before it; True if so (its counts are to be taken back). A pass that read
        more, or to its end, is a pass like any other (a loop broken part-way is not a look)."""
        newest = self.running == serial
        if newest:
            self.running = None
        entry = next((e for e in self.looks if e[0] == serial), None)
        if entry is None:
            return False
        last = entry is self.looks[-1]
        self.looks.remove(entry)
        _, fields, moves = entry
        if not (last and newest and moves == self.moves and not at_end and handed <= LOOK_BATCHES):
            return False
        self._put_back(fields)
        return True

    def forget_passes(self) -> None:
        """A copy of the loader (pickled, deep-copied) runs no pass of its own yet."""
        self.running, self.looks, self._pending_look = None, [], None

    def _put_back(self, fields: dict) -> None:
        for name, value in fields.items():
            setattr(self, name, value)

    def can_resume(self, serial: int, moves: int) -> bool:
        """Whether pass ``serial``, superseded, may go on where it was: a look taken while it ran
        is over and put the position back (:meth:`finish`), and nothing else moved it (``moves``:
        :attr:`moves` when it began)."""
        return (serial != self.serial and self.running == serial and moves == self.moves
                and self.next_epoch is None and serial not in (*self.closed_pass, self.moved_pass, self.forked_pass))

    def resume_pass(self, serial: int, epoch: int, done: int) -> None:
        """Pass ``serial`` goes on at batch ``done`` of ``epoch``: the position is its own again."""
        self.epoch, self.batches_done, self.resume_pending, self.ended = epoch, done, True, False
        self.open_pass = None

    def is_current(self, serial: int) -> bool:
        return serial == self.serial

    def close_current(self) -> None:
        """``close()``: the running pass (if any) raises at its next batch instead of ending as if
        its epoch were over; ``batches_done`` keeps where it stopped, so a state resumes there."""
        if self.ended_pass != self.serial:        # (closed at its last batch, the pass is whole; the pass a
            self.closed_pass = (self.serial, self.running)    # look put back runs, and is closed too)
        self.moves += 1

    def check_current(self, serial: int) -> None:
        if serial == self.forked_pass:
            raise RuntimeError(
                "this pass over the StreamLoader was started before os.fork() (or a fork-started "
                "multiprocessing child), by the parent process, whose reading workers serve it there. In "
                "this process, start a pass of its own with iter(loader); it starts workers of its own.")
        if serial in self.closed_pass:
            raise RuntimeError(
                "this pass over the StreamLoader was stopped: loader.close() was called (or its with block "
                "was left) while the pass ran, which stops its reading workers. Start a new pass with "
                "iter(loader); state_dict() still holds where this one stopped.")
        if serial == self.moved_pass:
            raise RuntimeError(
                "this pass over the StreamLoader was left: load_state_dict() moved the loader's position while "
                "the pass ran, and its next batch would have counted on the loaded position. Load a state "
                "between passes, then start a new one with iter(loader).")
        if serial != self.serial:
            raise RuntimeError(
                "this pass over the StreamLoader was superseded: another pass began while it ran (iter(loader), "
                "or loader.dataset[j] ahead of the position). "
                "A StreamLoader runs one pass at a time (its reading workers serve the newest pass), so the "
                "older pass stops here rather than share or lose batches. Finish or drop a pass before "
                "starting another (for one batch to look at, take next(iter(loader)) before the loop: that "
                "look is a pass of epoch 0, left, so the loop's pass is epoch 1's unless set_epoch(0) is called "
                "before it, as a DataLoader's next iter() is a new shuffle).")

    def end_epoch(self, serial: int) -> None:
        """Pass ``serial`` handed on its epoch's last batch. A state taken now resumes at the next
        epoch; after ``set_epoch`` (whose caller chooses the next epoch) it says this one is over."""
        if self.open_pass == serial:
            self.open_pass = None
        self.ended_pass, self.resumed_at = serial, None
        if self._start_next_epoch():
            return
        if self.explicit_epoch:
            self.ended = True
        else:
            self.advance()

    def advance(self) -> None:
        self.batches_done, self.ended = 0, False
        if not self.explicit_epoch:
            self.epoch += 1
            self.resumed_at = None


def caller_stacklevel() -> int:
    """``stacklevel`` for a warning from inside a pass: the first frame outside streamaug (the
    user's loop, or the framework's), however many of the loader's generators lie between."""
    import sys

    frame, level = sys._getframe(1), 1        # noqa: SLF001 - (the function that warns)
    while frame is not None and frame.f_globals.get("__name__", "").startswith("streamaug."):
        frame, level = frame.f_back, level + 1
    return level
