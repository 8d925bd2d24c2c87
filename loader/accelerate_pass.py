"""Tell accelerate where a pass is, as the DataLoaders it prepares do.

``with accelerator.accumulate(model)`` steps the optimizer every ``gradient_accumulation_steps``
batches *and* at the last batch of a pass, which it learns from
``GradientState.end_of_dataloader``. Only the DataLoaders accelerate wraps set that
(``DataLoaderStateMixin``: ``begin()`` registers the loader with the ``GradientState``,
the last batch sets ``end_of_dataloader``, ``end()`` unregisters it). ``prepare()`` hands a
:class:`StreamLoader` back unwrapped, since it already splits the data by rank, so without
this the last partial accumulation window of every pass was never stepped and its gradient
leaked into the next pass.

``gather_for_metrics`` reads ``remainder`` at the last batch: the rows it gathers there are
cut to the first ``remainder``, the real ones, where accelerate's own loaders put the padding
that evens out the ranks. The epoch plan puts a StreamLoader's padding there too when it can
(``EpochPlan.gathered_real``: in dataset order, without a balancer), so the same evaluation
loop counts every sample once.

:func:`pass_marker` does what ``begin()`` does, for one pass, when accelerate is imported
and an ``Accelerator`` (so a ``GradientState``) exists; nothing otherwise. The registration
ends with the pass: its iterator exhausted, closed or dropped, or a newer pass begun (a
DataLoader rebuilt over ``loader.dataset``, as ``skip_first_batches`` makes, holds its pass
until it is dropped). It uses
``GradientState._add_dataloader``/``_remove_dataloader``, the calls accelerate's own
loaders make (accelerate has no public hook for this); if a version lacks them, the
loader works as before and warns once.
"""
from __future__ import annotations

import sys
import warnings


class PassMarker:
    """What ``GradientState`` reads from its active loader: ``end_of_dataloader``, ``remainder``."""

    def __init__(self, state, remainder: int = -1):
        self.end_of_dataloader = False
        # gather_for_metrics keeps the first ``remainder`` rows it gathers from the last batches
        # (> 0); 0: none padded; -1: unknown (padded rows are flagged in Batch.is_padding)
        self.remainder = remainder
        self._state = state

    def at_batch(self, last: bool) -> None:
        self.end_of_dataloader = bool(last)

    def close(self) -> None:
        if self._state is not None:
            self._state._remove_dataloader(self)      # noqa: SLF001 - what accelerate's own loaders call
            self._state = None


_warned = False


def pass_marker(remainder: int = -1) -> PassMarker | None:
    """Register a pass with accelerate's ``GradientState``, if there is one; ``None`` otherwise.
    ``remainder`` is the pass's ``EpochPlan.gathered_real``."""
    global _warned
    module = sys.modules.get("accelerate.state")
    gradient_state = getattr(module, "GradientState", None)
    if gradient_state is None or not getattr(gradient_state, "_shared_state", None):
        return None                         # accelerate not imported, or no Accelerator made yet
    state = gradient_state()
    if not hasattr(state, "_add_dataloader") or not hasattr(state, "_remove_dataloader"):
        if not _warned:
            _warned = True
            warnings.warn("this accelerate version's GradientState has no _add_dataloader: gradient accumulation "
                          "will not step at the end of a StreamLoader pass", RuntimeWarning, stacklevel=3)
        return None
    marker = PassMarker(state, remainder)
    state._add_dataloader(marker)           # noqa: SLF001
    return marker
