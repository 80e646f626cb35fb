"""Central evaluation of the global model on the server's test set after every round."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import torch
from flwr.app import ArrayRecord, MetricRecord

from common.config import EvalConfig
from common.data import Beats, has_rhythm
from common.metrics import evaluate, evaluate_standard, progress_line
from common.model import EcgCnn, pick_device
from server.results import Results


class NonFiniteModel(RuntimeError):
    """The global model has NaN or infinite weights: nothing it predicts may be reported."""


class RoundEvaluator:
    """What Flower calls with round 0 (the initial weights) and after every round: it evaluates the global model
    (the field's standard attacks too after `last_round`, or every round when asked), appends the metrics to the
    results and writes the round's checkpoint (last: a round counts as complete once its checkpoint exists). On
    resume the rounds are shifted by `round_offset`, and round 0 is the checkpoint that the earlier run already
    evaluated.

    With `overlap`, a round is evaluated in a background thread while the next round trains: the same numbers,
    written in round order (one worker); the call returns None at once and `finish()` waits for the rest. A
    non-finite model is refused at the call either way, before anything is queued."""

    def __init__(
        self,
        test: Beats,
        cfg: EvalConfig,
        results: Results,
        round_offset: int,
        resumed: bool,
        last_round: int,
        overlap: str,
    ) -> None:
        self.test, self.cfg, self.results = test, cfg, results
        self.round_offset, self.resumed, self.last_round = round_offset, resumed, last_round
        self.device = pick_device()
        self.model = EcgCnn(rhythm=has_rhythm(test))
        overlapped = overlap == "on" or (overlap == "auto" and self.device.type == "cuda")
        self.worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="evaluate") if overlapped else None
        self.pending: list[Future] = []

    def __call__(self, server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 and self.resumed:
            return None
        real_round = server_round + self.round_offset
        state = arrays.to_torch_state_dict()
        broken = [name for name, tensor in state.items() if not torch.isfinite(tensor).all()]
        if broken:  # a NaN model predicts class 0 (N, the majority) everywhere: it must never be scored
            raise NonFiniteModel(
                f"round {real_round}: the global model holds non-finite values in {', '.join(broken)}; "
                "the run stops here (defence.validate-updates keeps such updates out)"
            )
        if self.worker is None:
            return self._evaluate(real_round, state)
        self._raise_failed()
        self.pending.append(self.worker.submit(self._evaluate, real_round, state))
        return None

    def finish(self) -> None:
        """Wait for the evaluations still running; raise the first one that failed."""
        if self.worker is None:
            return
        self.worker.shutdown(wait=True)
        self._raise_failed()

    def _raise_failed(self) -> None:
        for future in [f for f in self.pending if f.done()]:
            self.pending.remove(future)
            future.result()

    def _evaluate(self, real_round: int, state: dict[str, torch.Tensor]) -> MetricRecord:
        self.model.load_state_dict(state)

        def show(condition: str, metrics: dict) -> None:
            print(progress_line(real_round, condition, metrics), flush=True)

        cfg = self.cfg
        metrics = evaluate(self.model, self.test, cfg, self.device, on_condition=show)
        if cfg.standard.windows and (cfg.standard.every_round or real_round == self.last_round):
            metrics |= evaluate_standard(self.model, self.test, cfg, self.device, on_condition=show)
        self.results.add_metrics(real_round, metrics)
        self.results.save_checkpoint(real_round, {k: v.detach().cpu() for k, v in state.items()})
        return MetricRecord(
            {f"{c}-{k}": float(m[k]) for c, m in metrics.items() for k in ("accuracy", "precision", "recall", "f1")}
        )
