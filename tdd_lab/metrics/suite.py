"""Several metric sets evaluated on the same samples, e.g. FID against real images, FID against the
teacher and CLIP score."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from tdd_lab.metrics.base import Metrics


class MetricSuite(Metrics):
    """Union of the members' results; metric names must not collide."""

    def __init__(self, members: Mapping[str, Metrics] | Sequence[Metrics]):
        self._members = list(members.values()) if isinstance(members, Mapping) else list(members)
        if not self._members:
            raise ValueError("MetricSuite needs at least one member")
        self.deterministic = any(m.deterministic for m in self._members)
        self.needs_teacher_samples = any(m.needs_teacher_samples for m in self._members)

    @property
    def members(self) -> list[Metrics]:
        return self._members

    def set_teacher_samples(self, samples, teacher=None) -> None:
        for m in self._members:
            if m.needs_teacher_samples:
                m.set_teacher_samples(samples, teacher)

    def compute(self, samples, labels, noise, teacher, guider):
        out: dict[str, float] = {}
        for m in self._members:
            scores = m.compute(samples, labels, noise, teacher, guider)
            clash = set(scores) & set(out)
            if clash:
                raise ValueError(f"MetricSuite: metric name {sorted(clash)[0]!r} produced twice; set a member's name")
            out.update(scores)
        return out

    def describe(self) -> dict:
        return {"class": type(self).__name__, "members": [m.describe() for m in self._members]}
