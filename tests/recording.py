"""The real runners `open_runner` returns, wrapped so a test sees what happened to those very objects: every `run`
(feeds and outputs, device outputs copied back for the test), every enter and exit, and which engines were open
together. Nothing is replaced: the wrapped runner does the work and its answer is returned unchanged.

    engines = EngineLog()
    monkeypatch.setattr("wan_rt.pipeline.open_runner", engines.open_runner)
"""
from __future__ import annotations

from wan_rt.backends import DeviceTensor
from wan_rt.backends import open_runner as real_open_runner


class RecordingRunner:
    """One runner as `open_runner` returned it; `calls` in order, `exits` counted on the object itself."""

    def __init__(self, runner, name: str, log: "EngineLog"):
        self._runner = runner
        self.name = name
        self._log = log
        self.calls: list[dict] = []
        self.enters = self.exits = 0  # 0 and 0: only preflighted (--memory stage checks an engine unopened)

    def __getattr__(self, attribute):
        return getattr(self._runner, attribute)

    def __enter__(self):
        self._runner.__enter__()
        self.enters += 1
        self._log.entered(self)
        return self

    def __exit__(self, *exc):
        result = self._runner.__exit__(*exc)
        self.exits += 1
        self._log.exited(self)
        return result

    def run(self, feeds, keep=()):
        outputs = self._runner.run(feeds, keep=keep)
        host = lambda value: value.numpy() if isinstance(value, DeviceTensor) else value
        call = {"engine": self.name, "feeds": {k: host(v) for k, v in feeds.items()},
                "outputs": {k: host(v) for k, v in outputs.items()}}
        self.calls.append(call)
        self._log.calls.append(call)
        return outputs


class EngineLog:
    """Every runner opened through `open_runner` while patched in, and the engines open at once over time."""

    def __init__(self):
        self.runners: list[RecordingRunner] = []
        self.calls: list[dict] = []  # every run of every engine, in order
        self.open_now: list[RecordingRunner] = []
        self.most_open: list[str] = []  # the largest set of engines open together, by name

    def open_runner(self, manifest, name, **options) -> RecordingRunner:
        runner = RecordingRunner(real_open_runner(manifest, name, **options), name, self)
        self.runners.append(runner)
        return runner

    def entered(self, runner: RecordingRunner) -> None:
        self.open_now.append(runner)
        if len(self.open_now) > len(self.most_open):
            self.most_open = [r.name for r in self.open_now]

    def exited(self, runner: RecordingRunner) -> None:
        self.open_now.remove(runner)

    def named(self, name: str) -> list[RecordingRunner]:
        return [r for r in self.runners if r.name == name]

    def engine_calls(self, *names: str) -> list[dict]:
        return [c for c in self.calls if c["engine"] in names]


def check_runners_closed(engine_log: EngineLog, most: int) -> None:
    """Every runner object `open_runner` returned and the pipeline entered was exited exactly once (on the object
    itself, not in the pipeline's own log), and at most `most` were open together."""
    entered = [r for r in engine_log.runners if r.enters]
    assert entered and not engine_log.open_now, [r.name for r in engine_log.open_now]
    assert all(r.enters == r.exits == 1 for r in entered), [(r.name, r.enters, r.exits) for r in entered]
    assert all(r._runner.session is None for r in entered)  # the ONNX Runtime session itself was let go
    assert len(engine_log.most_open) <= most, engine_log.most_open
