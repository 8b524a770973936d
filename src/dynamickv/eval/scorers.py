"""How each benchmark scores a prediction (0-100) and a whole task."""

from __future__ import annotations

from collections.abc import Sequence

from dynamickv.errors import InputError
from dynamickv.eval.base import Sample
from dynamickv.eval.grid import BENCHMARKS


class Scorer:
    """How a benchmark scores: one sample (0-100) and a whole task."""

    name = ""

    def sample(self, sample: Sample, prediction: str) -> float:
        raise NotImplementedError

    def task(self, task: str, samples: Sequence[Sample], predictions: Sequence[str]) -> tuple[float, dict]:
        """``(score, extra)``: the task score (0-100) and anything else worth keeping (buckets ...)."""
        scores = [self.sample(s, p) for s, p in zip(samples, predictions, strict=True)]
        return (sum(scores) / len(scores) if scores else float("nan")), {}

    def length_of(self, sample: Sample) -> int | None:
        """The sample's target sequence length, for per-length breakdowns (None: no breakdown)."""
        return None


class RulerScorer(Scorer):
    name = "ruler"

    def sample(self, sample: Sample, prediction: str) -> float:
        from dynamickv.eval import ruler

        return ruler.score_per_sample(sample.task, [prediction], [sample])[0]

    def task(self, task, samples, predictions):
        from dynamickv.eval import ruler

        return ruler.score(task, list(predictions), list(samples)), {}

    def length_of(self, sample: Sample) -> int | None:
        return sample.meta.get("seq_length")


class NiahScorer(Scorer):
    name = "niah"

    def sample(self, sample: Sample, prediction: str) -> float:
        from dynamickv.eval import niah

        return niah.score(prediction, sample)

    def length_of(self, sample: Sample) -> int | None:
        return sample.meta.get("length")


class LongBenchScorer(Scorer):
    def __init__(self, e: bool = False) -> None:
        self.e = e
        self.name = "longbench-e" if e else "longbench"

    def sample(self, sample: Sample, prediction: str) -> float:
        from dynamickv.eval import longbench

        return 100.0 * longbench.score_samples(sample.task, [sample], [prediction])["per_sample"][0]

    def task(self, task, samples, predictions):
        from dynamickv.eval import longbench

        result = longbench.score_samples(task, list(samples), list(predictions), longbench_e=self.e)
        return float(result["score"]), ({"buckets": result["buckets"]} if "buckets" in result else {})


def get_scorer(benchmark: str) -> Scorer:
    """The scorer of ``benchmark`` (one of :data:`BENCHMARKS`)."""
    key = str(benchmark).strip().lower()
    if key == "ruler":
        return RulerScorer()
    if key == "niah":
        return NiahScorer()
    if key in ("longbench", "longbench-e"):
        return LongBenchScorer(e=key == "longbench-e")
    raise InputError(f"unknown benchmark {benchmark!r}; choose from {', '.join(BENCHMARKS)}")
