"""FedAvgM (`server-momentum`, `server-lr`): Flower's strategy, guarded as FedAvg is, and resumable: a run stopped
after a round and resumed from its checkpoint ends where the run without a stop ends."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict

from common.config import ConfigError, FederationConfig
from common.model import build_model
from server.results import Results
from server.strategy import make_strategy
from tests.helpers import FakeGrid, WritesAFileWhenUnpickled

NODES = 3
START = build_model(0).state_dict()


def _step(model: dict[str, torch.Tensor], server_round: int, node: int) -> dict[str, torch.Tensor]:
    """A node's reply: the global model moved by a node's and a round's own direction."""
    generator = torch.Generator().manual_seed(100 * server_round + node)
    return {k: v + 0.01 * torch.randn(v.shape, generator=generator) for k, v in model.items()}


def _rounds(cfg: FederationConfig, results: Results, model: dict, first: int, last: int, offset: int = 0) -> dict:
    """Rounds `first`..`last` of one strategy (as `strategy.start` numbers them: from 1 after the offset)."""
    strategy = make_strategy(cfg, results, round_offset=offset)
    for server_round in range(first, last + 1):
        grid = FakeGrid(list(range(NODES)))
        messages = strategy.configure_train(server_round - offset, ArrayRecord(model), ConfigRecord({}), grid)
        replies = []
        for node, message in enumerate(messages):
            metrics = MetricRecord(
                {"num-examples": 100 + node, "train-loss": 0.5, "train-accuracy": 0.5, "train-seconds": 1.0}
            )
            content = RecordDict({"arrays": ArrayRecord(_step(model, server_round, node)), "metrics": metrics})
            replies.append(Message(content, reply_to=message))
        arrays, _ = strategy.aggregate_train(server_round - offset, replies)
        model = arrays.to_torch_state_dict()
        results.save_checkpoint(server_round, model)
    return model


def _config(**settings: object) -> FederationConfig:
    return FederationConfig(num_nodes=NODES, nodes_per_round=NODES, **settings)


def test_server_momentum_steps_along_the_last_rounds_and_resumes_with_them(tmp_path: Path, task_identity) -> None:
    cfg = _config(server_momentum=0.9, server_lr=0.1)
    results = Results(tmp_path / "straight")
    results.start(cfg)
    straight = _rounds(cfg, results, START, 1, 3)

    # By hand: m_r = 0.9 m_(r-1) + (g_(r-1) - average_r), g_r = g_(r-1) - 0.1 m_r (Flower's FedAvgM, SGD's form).
    model, momentum = {k: v.double() for k, v in START.items()}, None
    for server_round in (1, 2, 3):
        replies = [_step({k: v.float() for k, v in model.items()}, server_round, node) for node in range(NODES)]
        weights = [(100 + node) / sum(100 + n for n in range(NODES)) for node in range(NODES)]
        average = {k: sum(w * r[k].double() for w, r in zip(weights, replies, strict=True)) for k in model}
        step = {k: model[k] - average[k] for k in model}
        momentum = step if momentum is None else {k: 0.9 * momentum[k] + step[k] for k in model}
        model = {k: model[k] - 0.1 * momentum[k] for k in model}
    for name, value in straight.items():
        assert torch.allclose(value.double(), model[name], atol=1e-6), name
    fedavg = Results(tmp_path / "fedavg")
    fedavg.start(_config())
    plain = _rounds(_config(), fedavg, START, 1, 3)
    assert any(not torch.allclose(plain[k], straight[k], atol=1e-4) for k in plain)  # the momentum acted

    stopped = Results(tmp_path / "stopped")
    stopped.start(cfg)
    after_two = _rounds(cfg, stopped, START, 1, 2)
    resumed_cfg = cfg.model_copy(update={"resume": True})
    assert stopped.start(resumed_cfg) == 2
    resumed = _rounds(resumed_cfg, stopped, stopped.load_checkpoint(2), 3, 3, offset=2)
    assert torch.equal(stopped.load_checkpoint(2)["classifier.5.bias"], after_two["classifier.5.bias"])
    for name, value in straight.items():
        assert torch.equal(resumed[name], value), name


def test_without_its_saved_momentum_a_resumed_run_would_end_elsewhere(tmp_path: Path, task_identity) -> None:
    """The check above can fail: resuming with the momentum forgotten gives another model."""
    cfg = _config(server_momentum=0.9, server_lr=0.1)
    results = Results(tmp_path)
    results.start(cfg)
    straight = _rounds(cfg, results, START, 1, 3)
    (results.checkpoints / "momentum_002.pt").unlink()
    resumed = _rounds(cfg, results, results.load_checkpoint(2), 3, 3, offset=2)
    assert not all(np.allclose(resumed[k].numpy(), straight[k].numpy()) for k in straight)


@pytest.mark.parametrize("lr", [0.5, 2.0])
def test_a_server_lr_alone_takes_that_share_of_fedavgs_step(tmp_path: Path, task_identity, lr: float) -> None:
    scaled, full = Results(tmp_path / "scaled"), Results(tmp_path / "full")
    scaled.start(_config(server_lr=lr))
    full.start(_config())
    stepped, fedavg = _rounds(_config(server_lr=lr), scaled, START, 1, 1), _rounds(_config(), full, START, 1, 1)
    for name, value in stepped.items():
        assert torch.allclose(value, START[name] + lr * (fedavg[name] - START[name]), atol=1e-6), name


def test_a_server_momentum_alone_acts_and_is_kept(tmp_path: Path, task_identity) -> None:
    """With server-lr at its default 1, a momentum still makes the strategy FedAvgM: from round 2 the model
    moves by the round's average step plus 0.9 x round 1's, and the momentum is saved for a resume."""
    cfg = _config(server_momentum=0.9)
    with_momentum, fedavg = Results(tmp_path / "momentum"), Results(tmp_path / "fedavg")
    with_momentum.start(cfg)
    fedavg.start(_config())
    moved, plain = _rounds(cfg, with_momentum, START, 1, 2), _rounds(_config(), fedavg, START, 1, 2)
    assert not all(torch.allclose(moved[k], plain[k], atol=1e-4) for k in plain)
    assert with_momentum.load_momentum(2) is not None and fedavg.load_momentum(2) is None


@pytest.mark.parametrize("setting", [{"server_momentum": 0.9}, {"server_lr": 0.5}])
def test_server_momentum_is_fedavgs_and_refused_with_another_aggregation(setting: dict) -> None:
    with pytest.raises(ValueError, match=r"FedAvgM's: they need defence\.aggregation fedavg"):
        _config(**setting, defence={"aggregation": "median"})
    with pytest.raises(ConfigError, match=r"run config key 'server-momentum': Input should be less than 1"):
        FederationConfig.from_run_config({"server-momentum": 1.0})


@pytest.mark.parametrize("name", ["momentum_002.pt", "round_002.pt"])
def test_a_checkpoint_holding_pickled_objects_is_refused_without_unpickling_them(tmp_path: Path, name: str) -> None:
    """A resumed run reads its results directory's files, which may have been copied from elsewhere:
    unpickling one would run whatever code it names, so only tensors are read."""
    results = Results(tmp_path / "run")
    results.start(_config(server_momentum=0.9))
    marker = tmp_path / "unpickled"
    torch.save({"features.0.weight": WritesAFileWhenUnpickled(marker)}, results.checkpoints / name)
    load = results.load_momentum if name.startswith("momentum") else results.load_checkpoint
    with pytest.raises(pickle.UnpicklingError, match="Weights only load failed"):
        load(2)
    assert not marker.exists()
