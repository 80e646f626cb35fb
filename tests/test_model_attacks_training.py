"""The paper's CNN, the attacks, adversarial local training and the metrics."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import torchattacks

from common.attacks import build_attacks, perturb
from common.config import (
    NUM_CLASSES,
    AttackSuite,
    EvalConfig,
    PgdConfig,
    PrepareConfig,
    StandardAttackConfig,
    TrainConfig,
)
from common.data import Beats, load_beats, prepare, save_beats
from common.metrics import classification_metrics, evaluate, evaluate_standard
from common.model import EcgCnn, PairMaxPool, build_model, reads_rhythm
from common.train import proximal_distance, train
from ecg_fat.cli import main
from tests.conftest import synthetic_beats


def test_model_has_the_papers_parameter_count_and_shape() -> None:
    model = EcgCnn()
    assert sum(p.numel() for p in model.parameters()) == 410_021
    assert model(torch.zeros(7, 1, 180)).shape == (7, 5)


def test_the_rhythm_model_reads_its_rr_features_and_is_the_papers_cnn_otherwise() -> None:
    paper, rhythm = build_model(0), build_model(0, rhythm=True)
    assert sum(p.numel() for p in rhythm.parameters()) == 410_021 + 4 * 256  # the first dense layer's new inputs
    assert reads_rhythm(rhythm.state_dict()) and not reads_rhythm(paper.state_dict())
    # Built as the probe built it: the same seed gives the paper's weights everywhere but that layer.
    same = {k for k, v in paper.state_dict().items() if torch.equal(v, rhythm.state_dict()[k])}
    assert set(paper.state_dict()) - same == {"classifier.1.weight", "classifier.1.bias"}
    x = torch.rand(8, 1, 184)
    moved = x.clone()
    moved[:, 0, 180:] = torch.rand(8, 4)  # the same windows, another rhythm
    with torch.no_grad():
        assert not torch.allclose(rhythm(x), rhythm(moved))


@pytest.mark.parametrize(("rhythm", "length"), [(False, 184), (True, 180), (False, 179)])
def test_inputs_of_another_length_are_refused_not_read(rhythm: bool, length: int) -> None:
    """184 values pool to the paper's 11 positions as 180 do: without the check a shard with RR features would
    train the paper's CNN on them as if they were samples, and a plain shard would feed the rhythm model."""
    with pytest.raises(ValueError, match=f"reads inputs of {184 if rhythm else 180} values .* got {length}"):
        EcgCnn(rhythm=rhythm)(torch.zeros(2, 1, length))


def test_the_attacks_perturb_the_rhythm_features_within_the_budget() -> None:
    model = build_model(0, rhythm=True).eval()
    x, y = torch.rand(16, 1, 184), torch.randint(0, 5, (16,))
    adversarial = perturb(build_attacks(model, AttackSuite())["pgd"], x, y)
    change = (adversarial - x).abs()
    assert change.max() <= 8 / 255 + 1e-6 and change[:, 0, 180:].max() > 0  # the features are input too
    assert adversarial.min() >= 0 and adversarial.max() <= 1


@pytest.mark.parametrize("length", [180, 45, 5])  # 45 and 5: the odd lengths whose last sample is dropped
def test_pair_max_pool_equals_max_pool1d_in_value_and_gradient_ties_included(length: int) -> None:
    # Quantised values make ties common, as in 11-bit ECG and ReLU zeros.
    x = (torch.randn(4, 6, length) * 4).round() / 4
    grad = torch.randn(4, 6, length // 2)
    reference, ours = x.clone().requires_grad_(), x.clone().requires_grad_()
    expected, got = torch.nn.MaxPool1d(2)(reference), PairMaxPool()(ours)
    expected.backward(grad)
    got.backward(grad)
    assert torch.equal(got, expected)
    assert torch.equal(ours.grad, reference.grad)
    assert (x[..., 0 : 2 * (length // 2) : 2] == x[..., 1 : 2 * (length // 2) : 2]).any()  # ties were there


def test_model_with_pair_max_pool_attacks_exactly_like_the_library_pool() -> None:
    x, y = torch.rand(16, 1, 180), torch.randint(0, 5, (16,))
    adversarial = []
    for pool in (PairMaxPool, lambda: torch.nn.MaxPool1d(2)):
        model = build_model(0, pool=pool)
        torch.manual_seed(1)
        adversarial.append(perturb(build_attacks(model, AttackSuite())["pgd"], x, y))
    assert torch.equal(*adversarial)


def test_build_model_is_seeded_and_leaves_global_rng_alone() -> None:
    torch.manual_seed(123)
    before = torch.rand(1)
    torch.manual_seed(123)
    a, b = build_model(5), build_model(5)
    assert torch.rand(1) == before
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    assert not torch.equal(next(build_model(6).parameters()), next(a.parameters()))


@pytest.mark.parametrize("name", ["pgd", "fgsm", "bim", "cw"])
def test_attacks_stay_in_bounds_and_leave_no_parameter_gradients(name: str) -> None:
    torch.manual_seed(0)
    model = EcgCnn().eval()
    x = torch.rand(16, 1, 180)
    y = torch.randint(0, 5, (16,))
    suite = AttackSuite(cw={"steps": 5})
    adv = perturb(build_attacks(model, suite)[name], x, y)
    assert adv.shape == x.shape and adv.min() >= 0.0 and adv.max() <= 1.0
    if name != "cw":  # CW is an L2 attack without an eps ball
        eps = getattr(suite, name).eps
        assert (adv - x).abs().max() <= eps + 1e-6
        assert (adv - x).abs().max() > 0.5 * eps  # it did move
    assert all(p.grad is None and p.requires_grad for p in model.parameters())


def test_pgd_raises_the_loss() -> None:
    torch.manual_seed(0)
    model = EcgCnn().eval()
    x, y = torch.rand(32, 1, 180), torch.randint(0, 5, (32,))
    adv = perturb(build_attacks(model, AttackSuite())["pgd"], x, y)
    loss = torch.nn.functional.cross_entropy
    with torch.no_grad():
        assert loss(model(adv), y) > loss(model(x), y)


def _train_batches(adversarial: bool, n: int = 20, batch: int = 8) -> list[int]:
    """Sizes of the batches the model was trained on (forwards in training mode)."""
    model = EcgCnn()
    sizes: list[int] = []
    model.register_forward_hook(lambda m, inputs, _: sizes.append(len(inputs[0])) if m.training else None)
    cfg = TrainConfig(epochs=1, batch_size=batch, adversarial=adversarial, pgd=PgdConfig(steps=2))
    history = train(model, synthetic_beats(n), cfg, torch.device("cpu"))
    assert history[0].windows == sum(sizes)
    return sizes


def test_adversarial_step_trains_on_twice_the_batch() -> None:
    assert _train_batches(adversarial=True) == [16, 16, 8]  # concat(x, PGD(x)): 2 x (8, 8, 4)
    assert _train_batches(adversarial=False) == [8, 8, 4]


def test_adversarial_batch_is_clean_then_pgd_with_repeated_labels(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[torch.Tensor] = []
    original = torch.nn.functional.cross_entropy
    monkeypatch.setattr(
        torch.nn.functional,
        "cross_entropy",
        lambda logits, target, **kwargs: seen.append(target) or original(logits, target, **kwargs),
    )
    train(
        EcgCnn(), synthetic_beats(8), TrainConfig(epochs=1, batch_size=8, pgd=PgdConfig(steps=1)), torch.device("cpu")
    )
    training_targets = [t for t in seen if len(t) == 16]
    assert len(training_targets) == 1
    assert torch.equal(training_targets[0][:8], training_targets[0][8:])


def test_training_reduces_the_loss() -> None:
    beats = synthetic_beats(400)
    beats = Beats(beats.x + beats.y[:, None, None].astype(np.float32), beats.y, beats.record)  # learnable
    beats = Beats((beats.x / beats.x.max()).astype(np.float32), beats.y, beats.record)
    history = train(EcgCnn(), beats, TrainConfig(epochs=4, adversarial=False), torch.device("cpu"))
    assert history[-1].loss < history[0].loss


def test_metrics_match_hand_computed_values() -> None:
    m = classification_metrics(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]))
    assert m["accuracy"] == pytest.approx(3 / 5)
    assert m["precision"] == pytest.approx((1 / 2 + 2 / 3 + 0) / 3)
    assert m["recall"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["f1"] == pytest.approx((1 / 2 + 0.8 + 0) / 3)
    assert m["recall_per_class"] == {"N": 0.5, "S": 1.0, "V": 0.0, "F": 0.0, "Q": 0.0}
    assert m["confusion"][0] == [1, 1, 0, 0, 0] and m["confusion"][2] == [1, 0, 0, 0, 0]


def test_evaluate_gives_every_condition_and_clean_equals_plain_forward() -> None:
    torch.manual_seed(0)
    model = EcgCnn()
    beats = synthetic_beats(40)
    cfg = EvalConfig(batch_size=16, attacks=AttackSuite(pgd={"steps": 2}, cw={"steps": 2}, bim={"steps": 2}))
    results = evaluate(model, beats, cfg, torch.device("cpu"))
    assert list(results) == ["clean", "pgd", "fgsm", "cw", "bim"]
    with torch.no_grad():
        expected = (model(torch.from_numpy(beats.x)).argmax(1).numpy() == beats.y).mean()
    assert results["clean"]["accuracy"] == pytest.approx(expected)
    assert evaluate(model, beats, cfg, torch.device("cpu"))["pgd"]["accuracy"] == results["pgd"]["accuracy"]


class _AttackBuilt(Exception):
    pass


@pytest.mark.parametrize("evaluation", [evaluate, evaluate_standard])
def test_attacks_are_built_from_the_model_on_the_evaluation_device(evaluation, monkeypatch: pytest.MonkeyPatch) -> None:
    """torchattacks takes an attack's device from the model's parameters when the attack is built: attacks built
    before the model moved sent CPU windows to CUDA weights, and the ServerApp failed at its first attack on an
    H100 (docs/results/gpu). Checked here without a GPU: the model has moved before the first attack is built."""
    moved = []

    class Recorded(EcgCnn):
        def to(self, *args, **kwargs):
            moved.append(True)
            return super().to(*args, **kwargs)

    def built(self, name, model) -> None:
        raise _AttackBuilt(bool(moved))

    monkeypatch.setattr(torchattacks.attack.Attack, "__init__", built)
    with pytest.raises(_AttackBuilt) as first_attack:
        evaluation(Recorded(), synthetic_beats(8), EvalConfig(), torch.device("cpu"))
    assert first_attack.value.args == (True,)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device (docs/results/gpu/run.sh runs this on a GPU)")
def test_a_cpu_model_trains_and_is_evaluated_under_every_attack_on_cuda() -> None:
    cuda, model, beats = torch.device("cuda"), build_model(0), synthetic_beats(64)
    train(model, beats, TrainConfig(epochs=1, batch_size=32, pgd={"steps": 2}), cuda)
    model.cpu()  # the server loads each round's weights into a model on the CPU
    cfg = EvalConfig(batch_size=32, attacks=AttackSuite(pgd={"steps": 2}, cw={"steps": 2}, bim={"steps": 2}))
    assert list(evaluate(model, beats, cfg, cuda)) == ["clean", "pgd", "fgsm", "cw", "bim"]
    model.cpu()
    autoattack = {"apgd_steps": 2, "apgd_t_steps": 2, "fab_steps": 2, "square_queries": 10}
    small = {"windows": 16, "pgd": {"steps": 2}, "pgd_restarts": 2, "autoattack": autoattack}
    standard = evaluate_standard(model, beats, cfg.model_copy(update={"standard": StandardAttackConfig(**small)}), cuda)
    assert "autoattack" in standard


def test_train_local_cli_end_to_end(record_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    prepare(record_dir, tmp_path / "p", PrepareConfig(clients=2))
    code = main(
        [
            "train-local",
            "--data",
            str(tmp_path / "p"),
            "--epochs",
            "1",
            "--pgd-steps",
            "2",
            "--cw-steps",
            "2",
            "--bim-steps",
            "2",
            "--save",
            str(tmp_path / "m.pt"),
        ]
    )
    assert code == 0
    table = capsys.readouterr().out
    saved = EcgCnn()
    saved.load_state_dict(torch.load(tmp_path / "m.pt"))
    test = load_beats(tmp_path / "p" / "test.npz")
    clean = evaluate(saved, test, EvalConfig(conditions=("clean",)), torch.device("cpu"))["clean"]
    rows = {line.split()[0]: line.split()[1:5] for line in table.splitlines()[1:]}
    assert list(rows) == ["clean", "pgd", "fgsm", "cw", "bim"]
    # the table shows the saved model's own scores: accuracy, precision, recall, F1 in percent
    assert rows["clean"] == [f"{100 * clean[k]:.2f}" for k in ("accuracy", "precision", "recall", "f1")]


def test_the_centralised_reference_caps_each_shard_as_a_node_would(record_dir: Path, tmp_path: Path) -> None:
    """--max-train-windows means per shard everywhere: train-local on all shards trains on what the nodes would."""
    from common.data import load_training_set

    manifest = prepare(record_dir, tmp_path / "p", PrepareConfig(clients=2))
    shards = [load_beats(tmp_path / "p" / name) for name in manifest.client_files]
    capped = load_training_set(tmp_path / "p", 7, seed=3)
    expected = Beats.concat([shard.subsample(7, 3) for shard in shards])
    assert len(capped) == 14 and np.array_equal(capped.x, expected.x) and np.array_equal(capped.y, expected.y)
    assert len(load_training_set(tmp_path / "p")) == sum(map(len, shards))


def test_train_local_bad_flag(record_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    assert main(["train-local", "--data", str(tmp_path), "--epochs", "0"]) == 2
    assert "--epochs" in capsys.readouterr().err
    assert main(["train-local", "--data", str(tmp_path), "--pgd-eps", "-1"]) == 2
    assert "--pgd-eps" in capsys.readouterr().err
    for flag, value in (("--lr", "inf"), ("--trades-beta", "nan")):  # no bound catches these
        assert main(["train-local", "--data", str(tmp_path), flag, value]) == 2
        assert flag in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # a choice argparse knows: its own one line, exit 2
        main(["train-local", "--data", str(tmp_path), "--sampling", "uniform"])
    assert exit_.value.code == 2 and "argument --sampling: invalid choice: 'uniform'" in capsys.readouterr().err


def test_evaluate_cli_scores_saved_weights(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    beats = synthetic_beats(40)
    save_beats(tmp_path / "test.npz", beats)
    model = build_model(3)
    torch.save(model.state_dict(), tmp_path / "m.pt")
    args = ["evaluate", "--model", str(tmp_path / "m.pt"), "--test", str(tmp_path / "test.npz")]
    code = main([*args, "--conditions", "clean", "fgsm", "--eval-batch-size", "16", "--json", str(tmp_path / "e.json")])
    assert code == 0
    printed = {line.split()[0]: line.split()[1] for line in capsys.readouterr().out.splitlines()[1:]}
    saved = json.loads((tmp_path / "e.json").read_text())
    assert printed == {c: f"{100 * saved['results'][c]['accuracy']:.2f}" for c in ("clean", "fgsm")}
    assert list(saved["results"]) == ["clean", "fgsm"]
    assert saved["config"]["batch-size"] == 16
    with torch.no_grad():
        expected = (model(torch.from_numpy(beats.x)).argmax(1).numpy() == beats.y).mean()
    assert saved["results"]["clean"]["accuracy"] == pytest.approx(expected)
    # an export directory scores as the weights it was made from (it is read through its weights.pt)
    assert main(["export", "--model", str(tmp_path / "m.pt"), "--out", str(tmp_path / "export")]) == 0
    args = ["evaluate", "--model", str(tmp_path / "export"), "--test", str(tmp_path / "test.npz")]
    assert main([*args, "--conditions", "clean", "--json", str(tmp_path / "x.json")]) == 0
    exported = json.loads((tmp_path / "x.json").read_text())["results"]["clean"]
    assert exported["confusion"] == saved["results"]["clean"]["confusion"]


def test_train_local_on_rhythm_data_trains_the_rhythm_model_and_evaluate_refuses_plain_windows(
    record_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    prepare(record_dir, tmp_path / "plain", PrepareConfig(clients=2))
    assert (
        main(["prepare", "--mitdb", str(record_dir), "--out", str(tmp_path / "rr"), "--clients", "2", "--rhythm"]) == 0
    )
    train_args = ["train-local", "--data", str(tmp_path / "rr"), "--epochs", "1", "--no-adversarial"]
    assert main([*train_args, "--conditions", "clean", "--save", str(tmp_path / "m.pt")]) == 0
    assert reads_rhythm(torch.load(tmp_path / "m.pt", weights_only=True))
    args = ["evaluate", "--model", str(tmp_path / "m.pt"), "--conditions", "clean", "--test"]
    assert main([*args, str(tmp_path / "rr" / "test.npz")]) == 0
    capsys.readouterr()
    assert main([*args, str(tmp_path / "plain" / "test.npz")]) == 2
    assert "test.npz: windows of 180 values, but --model reads 184" in capsys.readouterr().err


def test_evaluate_cli_names_a_bad_model_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    save_beats(tmp_path / "test.npz", synthetic_beats(20))
    args = ["evaluate", "--test", str(tmp_path / "test.npz"), "--model"]
    assert main([*args, str(tmp_path / "missing.pt")]) == 2
    assert "--model" in capsys.readouterr().err
    torch.save({"weight": torch.zeros(3)}, tmp_path / "other.pt")
    assert main([*args, str(tmp_path / "other.pt")]) == 2
    assert "not weights of this model (KeyError" in capsys.readouterr().err


def test_an_output_that_cannot_be_written_is_refused_before_the_work(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """Minutes of training or evaluation must not end in a traceback at the write: each output is checked
    first (here --data does not exist, so anything that got past the check would fail on it instead)."""
    (tmp_path / "a-file").write_text("")
    cases = [
        (["train-local", "--data", str(tmp_path / "none"), "--save", str(tmp_path)], "--save", "is a directory"),
        (["train-local", "--data", str(tmp_path / "none"), "--save", str(tmp_path / "a-file" / "m.pt")], "--save",
         "cannot create its directory"),
        (["evaluate", "--model", str(tmp_path / "m.pt"), "--test", str(tmp_path / "t.npz"), "--json", str(tmp_path)],
         "--json", "is a directory"),
    ]  # fmt: skip
    for args, flag, message in cases:
        assert main(args) == 2, args
        err = capsys.readouterr().err
        assert f"error: {flag} " in err and message in err and err.count("\n") == 1, err


def reference_class_weights(labels: np.ndarray, how: str) -> torch.Tensor | None:
    """scikit-learn's "balanced" class weights (0 for a class the labels lack), or their square root."""
    from sklearn.utils.class_weight import compute_class_weight

    if how == "none":
        return None
    present = np.unique(labels)
    weights = np.zeros(5)
    weights[present] = compute_class_weight("balanced", classes=present, y=labels)
    return torch.tensor(np.sqrt(weights) if how == "sqrt-balanced" else weights, dtype=torch.float32)


def written_out(beats: Beats, seed: int) -> tuple[EcgCnn, torch.optim.Adam, torch.Tensor, torch.Tensor]:
    """The start of a training loop written out by hand: a fresh model, the seed train() sets, Adam at lr 3e-3
    (not its default), and the windows and labels as tensors."""
    reference = build_model(0)
    torch.manual_seed(seed)
    optimizer = torch.optim.Adam(reference.parameters(), lr=3e-3)
    return reference, optimizer, torch.from_numpy(beats.x), torch.from_numpy(beats.y)


def assert_same_weights(model: EcgCnn, reference: EcgCnn, atol: float) -> None:
    for name, tensor in reference.state_dict().items():
        torch.testing.assert_close(
            model.state_dict()[name], tensor, rtol=0, atol=atol, msg=lambda detail, name=name: f"{name}: {detail}"
        )


def test_class_weights_are_scikit_learns_balanced_weights() -> None:
    from common.train import class_weights

    labels = np.array([0] * 50 + [1] * 5 + [2] * 20 + [4] * 1)  # no F (3)
    for how in ("balanced", "sqrt-balanced"):
        torch.testing.assert_close(class_weights(labels, how), reference_class_weights(labels, how))
    assert class_weights(labels, "balanced")[1] == pytest.approx(76 / (4 * 5))  # 4 classes present
    assert class_weights(labels, "none") is None
    # A node without Q beats (the highest label) still gets one weight per class, as cross-entropy needs.
    assert class_weights(labels[labels < 4], "balanced").shape == (5,)


@pytest.mark.parametrize("weighting", ["none", "balanced", "sqrt-balanced"])
def test_epoch_stats_are_the_loss_and_accuracy_the_optimiser_saw(weighting: str) -> None:
    beats = synthetic_beats(40)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, adversarial=False, seed=5, class_weights=weighting)
    model = build_model(0)
    history = train(model, beats, cfg, torch.device("cpu"))
    reference, optimizer, x, y = written_out(beats, 5)
    weight = reference_class_weights(beats.y, weighting)
    for epoch in (1, 2):
        total, correct = 0.0, 0
        for batch in torch.randperm(40).split(16):
            reference.train()
            optimizer.zero_grad()
            logits = reference(x[batch])
            loss = torch.nn.functional.cross_entropy(logits, y[batch], weight=weight)
            loss.backward()
            optimizer.step()
            total, correct = total + loss.item() * len(batch), correct + int((logits.argmax(1) == y[batch]).sum())
        stats = history[epoch - 1]
        assert (stats.epoch, stats.windows, stats.accuracy) == (epoch, 40, correct / 40)
        assert stats.loss == pytest.approx(total / 40, abs=1e-6) and 0 < stats.seconds < 60
    assert_same_weights(model, reference, atol=1e-6)


def test_fedprox_adds_mu_half_the_squared_distance_from_the_starting_weights() -> None:
    """FedProx (Li et al., 2020), written out: the loss of every batch plus mu / 2 x the squared L2 distance of
    the weights from those training started from (a node's copy of the round's global model)."""
    beats, mu = synthetic_beats(40), 0.5
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, adversarial=False, seed=5, proximal_mu=mu)
    model = build_model(0)
    history = train(model, beats, cfg, torch.device("cpu"))
    reference, optimizer, x, y = written_out(beats, 5)
    anchor = [p.detach().clone() for p in reference.parameters()]
    for epoch in (1, 2):
        total = 0.0
        for batch in torch.randperm(40).split(16):
            optimizer.zero_grad()
            distance = sum(((p - a) ** 2).sum() for p, a in zip(reference.parameters(), anchor, strict=True))
            loss = torch.nn.functional.cross_entropy(reference(x[batch]), y[batch]) + mu / 2 * distance
            loss.backward()
            optimizer.step()
            total += loss.item() * len(batch)
        assert history[epoch - 1].loss == pytest.approx(total / 40, abs=1e-6)
    assert_same_weights(model, reference, atol=1e-6)
    plain = build_model(0)
    train(plain, beats, cfg.model_copy(update={"proximal_mu": 0.0}), torch.device("cpu"))
    start = list(build_model(0).parameters())
    assert proximal_distance(model, start) < proximal_distance(plain, start)  # the term pulls toward the start


@pytest.mark.parametrize("sampling", ["balanced", "sqrt-balanced"])
def test_class_balanced_sampling_draws_each_epoch_with_the_class_weights_as_chances(sampling: str) -> None:
    from torch.utils.data import WeightedRandomSampler

    from common.train import epoch_order

    beats = synthetic_beats(40)
    cfg = TrainConfig(epochs=2, batch_size=16, lr=3e-3, adversarial=False, seed=5, sampling=sampling)
    model = build_model(0)
    train(model, beats, cfg, torch.device("cpu"))
    # Written out: each epoch, 40 windows drawn with replacement, a window's chance its class's sklearn weight.
    reference, optimizer, x, y = written_out(beats, 5)
    chances = reference_class_weights(beats.y, sampling)[y]  # type: ignore[index]
    for _ in (1, 2):
        for batch in torch.tensor(list(WeightedRandomSampler(chances, 40))).split(16):
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(reference(x[batch]), y[batch]).backward()
            optimizer.step()
    assert_same_weights(model, reference, atol=1e-6)
    # What it is for: class 1 is 1% of the windows; balanced sampling makes it a fifth of an epoch, sqrt-balanced
    # its share of the square roots of the counts (count x sqrt(n / (5 x count)) is proportional to sqrt(count)).
    counts = [9_000, 100, 500, 300, 100]
    labels = torch.repeat_interleave(torch.arange(5), torch.tensor(counts))
    shares = torch.bincount(labels[epoch_order(labels, sampling)], minlength=5) / len(labels)
    expected = 0.2 if sampling == "balanced" else np.sqrt(100) / np.sqrt(counts).sum()
    assert shares[1].item() == pytest.approx(expected, abs=0.015)


@pytest.mark.parametrize(("objective", "weighted_half"), [("concat", "both"), ("concat", "clean"), ("trades", "both")])
def test_adversarial_losses_are_their_formulas(objective: str, weighted_half: str) -> None:
    import torchattacks
    from torch.nn.functional import cross_entropy, kl_div, log_softmax, softmax

    beats = synthetic_beats(24)
    pgd_cfg = PgdConfig(steps=2)
    cfg = TrainConfig(
        epochs=1, batch_size=12, lr=3e-3, seed=2, class_weights="sqrt-balanced", pgd=pgd_cfg,
        weighted_half=weighted_half, objective=objective, trades_beta=3.0,
    )  # fmt: skip
    model = build_model(0)
    train(model, beats, cfg, torch.device("cpu"))
    # Written out: Algorithm 1 (weights on both halves or the clean one), or TRADES with torchattacks' KL-PGD.
    reference, optimizer, x, y = written_out(beats, 2)
    weight = reference_class_weights(beats.y, "sqrt-balanced")
    if objective == "trades":
        attack = torchattacks.TPGD(reference, eps=pgd_cfg.eps, alpha=pgd_cfg.alpha, steps=2)
    else:
        attack = torchattacks.PGD(reference, eps=pgd_cfg.eps, alpha=pgd_cfg.alpha, steps=2, random_start=True)
    for batch in torch.randperm(24).split(12):
        adversarial = attack(x[batch], y[batch]).detach()
        optimizer.zero_grad()
        natural_logits, adversarial_logits = reference(x[batch]), reference(adversarial)
        if objective == "trades":
            kl = kl_div(log_softmax(adversarial_logits, 1), softmax(natural_logits, 1), reduction="batchmean")
            loss = cross_entropy(natural_logits, y[batch], weight=weight) + 3.0 * kl
        elif weighted_half == "clean":
            unweighted = cross_entropy(adversarial_logits, y[batch])
            loss = (cross_entropy(natural_logits, y[batch], weight=weight) + unweighted) / 2
        else:
            both = torch.cat([natural_logits, adversarial_logits])
            loss = cross_entropy(both, torch.cat([y[batch], y[batch]]), weight=weight)
        loss.backward()
        optimizer.step()
    # Adam divides each gradient by its own running scale, so a weight whose gradient is near zero turns rounding
    # noise into up to lr per step: on a Zen 4 CPU two weights of 24,576 differ by 1.2e-5 here. 5e-5 stays well
    # under what a wrong loss moves (TRADES' beta 1 instead of 3: 3e-4; other class weights: 1e-2).
    assert_same_weights(model, reference, atol=5e-5)


def test_logit_offsets_are_tau_log_frequencies_and_leave_an_absent_class_out() -> None:
    from common.train import logit_offsets

    labels = np.array([0] * 50 + [1] * 5 + [2] * 20 + [4] * 1)  # no F (3)
    offsets = logit_offsets(labels, 0.5, floor=0.0)
    expected = 0.5 * np.log(np.array([50, 5, 20, 1]) / 76)
    np.testing.assert_allclose(offsets[[0, 1, 2, 4]].numpy(), expected, rtol=1e-6)
    assert offsets[3].item() == -np.inf
    assert logit_offsets(labels, 0.0, floor=0.0) is None
    floored = logit_offsets(labels, 0.5, floor=0.1)  # S (5/76) and Q (1/76) raised to 0.1, F still left out
    expected = 0.5 * np.log(np.array([50 / 76, 0.1, 20 / 76, 0.1]))
    np.testing.assert_allclose(floored[[0, 1, 2, 4]].numpy(), expected, rtol=1e-6)
    assert floored[3].item() == -np.inf


def test_a_node_without_the_last_class_still_has_an_offset_for_every_class() -> None:
    """Most inter-patient hospitals hold no Q beat, the last class: five offsets still, Q's minus infinity."""
    from common.train import logit_offsets

    offsets = logit_offsets(np.array([0] * 8 + [2] * 2), 1.0, floor=0.0)
    assert offsets.shape == (NUM_CLASSES,)
    np.testing.assert_allclose(offsets[[0, 2]].numpy(), np.log([0.8, 0.2]), rtol=1e-6)
    assert offsets[[1, 3, 4]].tolist() == [-np.inf] * 3


@pytest.mark.parametrize(("objective", "floor"), [("concat", 0.0), ("trades", 0.0), ("concat", 0.3)])
def test_the_logit_adjusted_loss_is_its_formula_and_never_moves_a_class_the_node_lacks(
    objective: str, floor: float
) -> None:
    """Menon et al.'s logit-adjusted cross-entropy inside Algorithm 1 (both halves) or TRADES (its cross-entropy
    term), written out; the attack and TRADES' KL see the model's own logits. In Algorithm 1 a node without S
    beats leaves S's output row and bias exactly as they came: with the paper's loss, Adam pushes them down."""
    import torchattacks
    from torch.nn.functional import cross_entropy, kl_div, log_softmax, softmax

    beats = synthetic_beats(48)
    keep = beats.y != 1
    beats = Beats(beats.x[keep], beats.y[keep], beats.record[keep])
    tau, pgd_cfg = 1.5, PgdConfig(steps=2)
    cfg = TrainConfig(
        epochs=1,
        batch_size=12,
        lr=3e-3,
        seed=2,
        pgd=pgd_cfg,
        objective=objective,
        logit_adjustment=tau,
        logit_adjustment_floor=floor,
    )
    model = build_model(0)
    train(model, beats, cfg, torch.device("cpu"))
    reference, optimizer, x, y = written_out(beats, 2)
    counts = torch.bincount(y, minlength=5).double()
    frequency = (counts / counts.sum()).clamp(min=floor)
    offsets = torch.where(counts > 0, tau * torch.log(frequency), -torch.inf).float()  # -inf for S
    if objective == "trades":
        attack = torchattacks.TPGD(reference, eps=pgd_cfg.eps, alpha=pgd_cfg.alpha, steps=2)
    else:
        attack = torchattacks.PGD(reference, eps=pgd_cfg.eps, alpha=pgd_cfg.alpha, steps=2, random_start=True)
    for batch in torch.randperm(len(y)).split(12):
        adversarial = attack(x[batch], y[batch]).detach()
        optimizer.zero_grad()
        natural_logits, adversarial_logits = reference(x[batch]), reference(adversarial)
        if objective == "trades":
            kl = kl_div(log_softmax(adversarial_logits, 1), softmax(natural_logits, 1), reduction="batchmean")
            loss = cross_entropy(natural_logits + offsets, y[batch]) + cfg.trades_beta * kl
        else:
            both = torch.cat([natural_logits, adversarial_logits]) + offsets
            loss = cross_entropy(both, torch.cat([y[batch], y[batch]]))
        loss.backward()
        optimizer.step()
    start, last = build_model(0).classifier[-1], model.classifier[-1]
    if objective == "trades":
        # TRADES' KL term has every class in its softmax, so S's row and bias get a gradient near zero there,
        # which Adam turns into up to lr per step of rounding noise (2e-3 here); the next steps carry it into a
        # few dozen other weights (up to 1e-4). So the two updates are compared as wholes: they differ by 0.2% of
        # their size, and by 26% where the offsets are 1.4 x log frequency instead of 1.5.
        initial = build_model(0).state_dict().items()
        updates = [torch.cat([(m.state_dict()[name] - w).flatten() for name, w in initial]) for m in (model, reference)]
        assert (updates[0] - updates[1]).norm() < 1e-2 * updates[1].norm()
    else:
        assert_same_weights(model, reference, atol=5e-5)  # the tolerance of the test above, for the same reason
        assert torch.equal(last.weight[1], start.weight[1]) and torch.equal(last.bias[1], start.bias[1])
    plain = build_model(0)
    paper_loss = cfg.model_copy(update={"logit_adjustment": 0.0, "logit_adjustment_floor": 0.0})
    train(plain, beats, paper_loss, torch.device("cpu"))
    assert plain.classifier[-1].bias[1] < start.bias[1] - 1e-3  # the paper's loss pushes the absent class down


@pytest.mark.parametrize(
    ("settings", "named"),
    [
        ({"logit_adjustment": 1.0, "class_weights": "sqrt-balanced"}, "logit-adjustment and class-weights"),
        ({"logit_adjustment_floor": 0.01}, "logit-adjustment-floor needs logit-adjustment"),
        ({"weighted_half": "clean"}, "weighted-half clean needs class-weights"),
        ({"weighted_half": "clean", "class_weights": "balanced", "objective": "trades"}, "objective concat"),
        ({"objective": "trades", "adversarial": False}, "objective trades is adversarial training"),
    ],
)
def test_training_options_that_would_do_nothing_are_refused(settings: dict, named: str) -> None:
    from pydantic import ValidationError

    with pytest.raises(ValidationError, match=named):
        TrainConfig(**settings)


def test_every_attack_setting_reaches_the_attack() -> None:
    from common.attacks import bim, cw, pgd
    from common.config import BimConfig, CwConfig

    model = build_model(0)
    assert pgd(model, PgdConfig(random_start=False)).random_start is False
    attack = cw(model, CwConfig(c=2.0, kappa=0.5, steps=3, lr=0.1))
    assert (attack.c, attack.kappa, attack.steps, attack.lr) == (2.0, 0.5, 3, 0.1)
    assert bim(model, BimConfig(steps=4)).steps == 4


def test_a_subsample_is_the_seeds_and_only_the_seeds() -> None:
    beats = synthetic_beats(50)
    first, again, other = (beats.subsample(10, seed).x[:, 0, :3] for seed in (3, 3, 4))
    assert np.array_equal(first, again) and not np.array_equal(first, other)
