"""Central evaluation of the global model on the server's test set after every round."""

from __future__ import annotations

from collections.abc import Callable

import torch
from flwr.app import ArrayRecord, MetricRecord

from common.config import EvalConfig
from common.data import Beats
from common.metrics import evaluate, evaluate_standard, progress_line
from common.model import EcgCnn, pick_device
from server.results import Results


class NonFiniteModel(RuntimeError):
    """The global model has NaN or infinite weights: nothing it predicts may be reported."""


def make_evaluate_and_record_fn(
    test: Beats, cfg: EvalConfig, results: Results, round_offset: int, resumed: bool, last_round: int
) -> Callable[[int, ArrayRecord], MetricRecord | None]:
    """The function Flower calls with round 0 (the initial weights) and after every round: it evaluates the
    global model (the field's standard attacks too after `last_round`, or every round when asked), appends
    the metrics to the results and writes the round's checkpoint (last: a round counts as complete once its
    checkpoint exists). On resume the rounds are shifted by `round_offset`, and round 0 is the checkpoint that
    the earlier run already evaluated."""
    device = pick_device()
    model = EcgCnn()

    def evaluate_round(server_round: int, arrays: ArrayRecord) -> MetricRecord | None:
        if server_round == 0 and resumed:
            return None
        real_round = server_round + round_offset
        state = arrays.to_torch_state_dict()
        broken = [name for name, tensor in state.items() if not torch.isfinite(tensor).all()]
        if broken:  # a NaN model predicts class 0 (N, the majority) everywhere: it must never be scored
            raise NonFiniteModel(
                f"round {real_round}: the global model holds non-finite values in {', '.join(broken)}; "
                "the run stops here (defence.validate-updates keeps such updates out)"
            )
        model.load_state_dict(state)

        def show(condition: str, metrics: dict) -> None:
            print(progress_line(real_round, condition, metrics), flush=True)

        metrics = evaluate(model, test, cfg, device, on_condition=show)
        if cfg.standard.windows and (cfg.standard.every_round or real_round == last_round):
            metrics |= evaluate_standard(model, test, cfg, device, on_condition=show)
        results.add_metrics(real_round, metrics)
        results.save_checkpoint(real_round, {k: v.detach().cpu() for k, v in state.items()})
        return MetricRecord(
            {f"{c}-{k}": float(m[k]) for c, m in metrics.items() for k in ("accuracy", "precision", "recall", "f1")}
        )

    return evaluate_round
