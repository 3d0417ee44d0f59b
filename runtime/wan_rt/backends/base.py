"""What every backend runner does: validate a feed against the manifest, then run it.

Pattern of polygraphy's runners: `with open_runner(manifest, "dit") as dit: outputs = dit.run(feeds)`.
Validation comes first, so a shape outside the built range is one clear line, not a library trace.
"""
from __future__ import annotations

import numpy as np

from wan_rt.errors import WanError
from wan_rt.manifest import ComponentInfo


def check_feeds(component: ComponentInfo, feeds: dict[str, np.ndarray]) -> None:
    expected = {tensor.name: tensor for tensor in component.inputs}
    missing = sorted(set(expected) - set(feeds))
    extra = sorted(set(feeds) - set(expected))
    if missing or extra:
        raise WanError(f"{component.name}: inputs do not match the engine (missing {missing}, unexpected {extra})")
    bound: dict[str, int] = {}
    for name, tensor in expected.items():
        array = feeds[name]
        if array.dtype != np.dtype(tensor.dtype):
            raise WanError(f"{component.name}: input {name} is {array.dtype}, the engine takes {tensor.dtype}")
        if array.ndim != len(tensor.shape):
            raise WanError(f"{component.name}: input {name} has shape {array.shape}, the engine takes {list(tensor.shape)}")
        for axis, (size, want) in enumerate(zip(array.shape, tensor.shape)):
            if isinstance(want, int):
                if size != want:
                    raise WanError(f"{component.name}: input {name} axis {axis} is {size}, the engine takes {want}")
                continue
            dim, _, factor = want.partition("*")
            factor = int(factor or 1)
            if size % factor:
                raise WanError(f"{component.name}: input {name} axis {axis} is {size}, not a multiple of {factor}")
            value = size // factor
            low, _, high = component.dims[dim]
            if not low <= value <= high:
                raise WanError(f"{component.name}: input {name} axis {axis} is {size}, outside the range the engine "
                               f"was built for ({low * factor}..{high * factor}); rebuild with a profile that covers it")
            if bound.setdefault(dim, value) != value:
                raise WanError(f"{component.name}: input {name} axis {axis} is {size}, inconsistent with the other "
                               f"inputs ({dim} = {bound[dim]})")


class Runner:
    """Base runner: subclasses implement `_open`, `_run` and optionally `_close`."""

    def __init__(self, component: ComponentInfo, path):
        self.component = component
        self.path = path

    def __enter__(self):
        self._open()
        return self

    def __exit__(self, *exc):
        self._close()

    def run(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        check_feeds(self.component, feeds)
        return self._run(feeds)

    def _open(self):
        raise NotImplementedError

    def _run(self, feeds):
        raise NotImplementedError

    def _close(self):
        pass
