"""The ServerApp: FedAvg over the SuperNodes, robust evaluation of the global model after every round."""

from __future__ import annotations

from pathlib import Path

from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from common.config import ConfigError, FederationConfig
from common.data import has_rhythm, load_beats
from common.model import build_model
from common.runtime import tune_allocator
from server.evaluation import RoundEvaluator
from server.results import Results
from server.strategy import make_strategy

app = ServerApp()


def _required_path(value: str, key: str) -> Path:
    path = Path(value)
    if not value or not path.is_absolute():
        raise ConfigError(f"run config key '{key}': needs an absolute path (got {value!r})")
    return path


@app.main()
def main(grid: Grid, context: Context) -> None:
    cfg = FederationConfig.from_run_config(context.run_config)
    tune_allocator()
    test_path = _required_path(cfg.test_path, "test-path")
    if not test_path.is_file():
        raise ConfigError(f"run config key 'test-path': {test_path} is not a file")
    results = Results(_required_path(cfg.results_dir, "results-dir"))
    test = load_beats(test_path).subsample(cfg.max_test_windows, cfg.seed)

    last = results.start(cfg)
    resumed = last >= 0
    if resumed:
        print(f"resuming from the round {last} checkpoint in {results.dir}", flush=True)
        state = results.load_checkpoint(last)
    else:
        state = build_model(cfg.seed, rhythm=has_rhythm(test)).state_dict()  # the model the windows need
    offset = last if resumed else 0

    strategy = make_strategy(cfg, results, round_offset=offset)
    evaluator = RoundEvaluator(test, cfg.evaluate, results, offset, resumed, cfg.num_rounds, cfg.overlap_evaluation)
    try:
        result = strategy.start(
            grid=grid,
            initial_arrays=ArrayRecord(state),
            num_rounds=cfg.num_rounds - offset,
            timeout=cfg.round_timeout,
            train_config=ConfigRecord({"seed": cfg.seed}),
            evaluate_fn=evaluator,
        )
    finally:
        evaluator.finish()  # every round's metrics and checkpoint are written before the final model
    final = result.arrays.to_torch_state_dict() if len(result.arrays) else state  # empty: no round ran
    results.save_final({k: v.detach().cpu() for k, v in final.items()})
    print(f"run complete: {cfg.num_rounds} rounds, results in {results.dir}", flush=True)
