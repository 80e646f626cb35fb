"""Every setting of ECG-FAT, with the paper's values as defaults.

These pydantic models are the one source of truth. They are validated once at the edge (the CLI,
the Flower run config, the SuperNode's node config); the code below the edge takes the validated
objects and never re-parses strings.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Literal, Self

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

NUM_CLASSES = 5
AAMI_CLASSES = ("N", "S", "V", "F", "Q")
# Table 1 of the paper: MIT-BIH annotation symbol -> AAMI class. Every other symbol is skipped.
AAMI_MAP: dict[str, str] = {
    **dict.fromkeys(("N", "L", "R", "j", "e"), "N"),
    **dict.fromkeys(("a", "S", "A", "J"), "S"),
    **dict.fromkeys(("E", "V"), "V"),
    "F": "F",
    **dict.fromkeys(("/", "Q", "f"), "Q"),
}
SAMPLING_RATE_HZ = 360
# What a node's training reply carries besides its weights: the ClientApp sends exactly these metrics and the
# ServerApp refuses any other (Flower's strategies end the run on replies whose metric keys differ).
TRAIN_METRICS = ("num-examples", "train-loss", "train-accuracy", "train-seconds")
# A node's training windows of each class, sent beside TRAIN_METRICS only with `class-weighted-head`.
CLASS_COUNT_METRICS = tuple(f"examples-{letter}" for letter in AAMI_CLASSES)
# The beat-rhythm features `prepare --rhythm` appends to each window (common.data.rr_features).
RHYTHM_FEATURES = 4

# de Chazal et al. (2004) inter-patient split; the paced records 102, 104, 107, 217 are in neither.
DS1_RECORDS = (
    "101",
    "106",
    "108",
    "109",
    "112",
    "114",
    "115",
    "116",
    "118",
    "119",
    "122",
    "124",
    "201",
    "203",
    "205",
    "207",
    "208",
    "209",
    "215",
    "220",
    "223",
    "230",
)
DS2_RECORDS = (
    "100",
    "103",
    "105",
    "111",
    "113",
    "117",
    "121",
    "123",
    "200",
    "202",
    "210",
    "212",
    "213",
    "214",
    "219",
    "221",
    "222",
    "228",
    "231",
    "232",
    "233",
    "234",
)


class ConfigError(ValueError):
    """A run-config or node-config value failed validation; the message names the key."""


def _kebab(field: str) -> str:
    return field.replace("_", "-")


class _Settings(BaseModel):
    # Python code uses field names; Flower's run and node configs use the kebab-case aliases. No setting has a
    # meaning at infinity or NaN (--proximal-mu inf would turn every weight into NaN), so both are refused.
    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        alias_generator=_kebab,
        validate_by_name=True,
        validate_by_alias=True,
        allow_inf_nan=False,
    )

    @classmethod
    def from_flat(cls, flat: Mapping[str, object], what: str, names: Mapping[str, str] | None = None) -> Self:
        """Validate a flat config (nested keys joined by '.', as Flower's run and node configs hold them).

        Errors name the key as `what key 'a.b'`, or by `names[key]` where given (the CLI's flags).
        """
        nested: dict[str, object] = {}
        for key, value in flat.items():
            *parents, leaf = key.split(".")
            target = nested
            for part in parents:
                target = target.setdefault(part, {})  # type: ignore[assignment]
            target[leaf] = value
        try:
            return cls.model_validate(nested)
        except ValidationError as error:

            def where(loc: tuple) -> str:
                key = ".".join(str(part) for part in loc)
                return (names or {}).get(key) or f"{what} key '{key}'"

            problems = "; ".join(
                f"{where(e['loc'])}: {e['msg']} (got {e.get('input')!r})"
                if e["loc"]
                else f"{what}: {e['msg'].removeprefix('Value error, ')}"  # a check across keys names them
                for e in error.errors()
            )
            raise ConfigError(problems) from error


class WindowConfig(_Settings):
    """A beat window: `before` samples before the annotation and `after` from it on."""

    before: int = Field(90, ge=1)
    after: int = Field(90, ge=1)

    @property
    def length(self) -> int:
        return self.before + self.after


# The lead used where none is named: MLII where a record has it (114 has it as its second signal), else the
# record's first signal (102 and 104 have no MLII).
AUTO_LEAD = "auto"


def _lead(value: object) -> object:
    """A lead given as text that is a number ("0", from a flag or a compose variable) is a signal index."""
    return int(value) if isinstance(value, str) and value.isdigit() else value


class PrepareConfig(_Settings):
    """How `ecg-fat prepare` turns WFDB records into a test set and client shards."""

    lead: int | str = Field(
        AUTO_LEAD, description="signal index or name; auto: MLII where a record has it, else its first signal"
    )
    window: WindowConfig = WindowConfig()
    split: Literal["intra-patient", "inter-patient"] = Field(
        "intra-patient",
        description="intra-patient (a stratified split of the beats) or inter-patient (de Chazal's DS1 records "
        "train, DS2 test; paced records excluded)",
    )
    test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="test share of an intra-patient split")
    clients: int = Field(10, ge=1, description="client shards")
    partition: Literal["iid", "patient", "dirichlet"] = Field(
        "iid", description="iid (stratified), patient (whole records per shard), dirichlet (label skew)"
    )
    alpha: float = Field(0.5, gt=0.0, description="Dirichlet concentration; smaller = more skew")
    seed: int = Field(42, description="seed of the split and the partition")
    # Beyond the paper (off by default): a supraventricular beat is told by its prematurity, which a 0.5 s
    # window barely holds (docs/results/centralised: across patients, S recall 7.7% -> 44.1% with these).
    rhythm: bool = Field(
        False,
        description="append 4 RR-interval features to each window (previous and next RR and the mean of the "
        "last ten, each over the record's mean RR, and previous over that mean of ten; halved, clipped to [0, 1]); "
        "the model reads them beside its convolutional features and the attacks may perturb them too",
    )

    _lead_index = field_validator("lead", mode="before")(staticmethod(_lead))


class PgdConfig(_Settings):
    eps: float = Field(8 / 255, gt=0.0, le=1.0, description="PGD L-inf radius (training and evaluation)")
    alpha: float = Field(1 / 255, gt=0.0, le=1.0, description="PGD step size")
    steps: int = Field(20, ge=1, description="PGD steps")
    random_start: bool = True


class FgsmConfig(_Settings):
    eps: float = Field(8 / 255, gt=0.0, le=1.0, description="FGSM L-inf radius")


class CwConfig(_Settings):
    c: float = Field(1.0, gt=0.0, description="CW constant c")
    kappa: float = Field(0.0, ge=0.0, description="CW confidence kappa")
    steps: int = Field(50, ge=1, description="CW Adam steps")
    lr: float = Field(0.01, gt=0.0, description="CW Adam learning rate")


class BimConfig(_Settings):
    eps: float = Field(8 / 255, gt=0.0, le=1.0, description="BIM L-inf radius")
    alpha: float = Field(2 / 255, gt=0.0, le=1.0, description="BIM step size")
    steps: int = Field(10, ge=1, description="BIM steps")


class AttackSuite(_Settings):
    """The four evaluation attacks of the paper."""

    pgd: PgdConfig = PgdConfig()
    fgsm: FgsmConfig = FgsmConfig()
    cw: CwConfig = CwConfig()
    bim: BimConfig = BimConfig()


CONDITIONS = ("clean", "pgd", "fgsm", "cw", "bim")


class AutoAttackConfig(_Settings):
    """AutoAttack, its standard L-inf version (Croce and Hein, 2020): APGD-CE, APGD-T, FAB-T and Square in turn,
    each on the windows the ones before left correctly classified. Built from torchattacks' components with the
    reference implementation's counts set here: torchattacks' own `AutoAttack` class leaves APGD, APGD-T and
    FAB at 10 steps. APGD-T and FAB-T target every other class (4 of the 5)."""

    eps: float = Field(8 / 255, gt=0.0, le=1.0, description="AutoAttack L-inf radius")
    apgd_steps: int = Field(100, ge=1, description="APGD-CE steps")
    apgd_t_steps: int = Field(100, ge=1, description="APGD-T steps per target class")
    fab_steps: int = Field(100, ge=1, description="FAB-T steps per target class")
    square_queries: int = Field(5000, ge=1, description="Square attack queries")


class StandardAttackConfig(_Settings):
    """The field's standard attacks beside the paper's: AutoAttack and PGD-100 with restarts, on a fixed,
    stratified subset of the test set, with the clean and PGD-20 results on the same windows for comparison."""

    # Off by default: on 2 CPU cores AutoAttack on 1,000 windows of a robust model took 4-5 minutes in the
    # committed runs, longer than the small runs of a first look; the protocol runs name 1000.
    windows: int = Field(
        0, ge=0, description="stratified test subset for AutoAttack and PGD-100 (0: leave them out; 1000 usual)"
    )
    every_round: bool = Field(False, description="AutoAttack and PGD-100 after every round, not only the last")
    autoattack: AutoAttackConfig = AutoAttackConfig()
    pgd: PgdConfig = PgdConfig(steps=100)
    pgd_restarts: int = Field(5, ge=1, description="PGD-100 random restarts (a window any restart breaks is broken)")


STANDARD_CONDITIONS = ("clean-subset", "pgd-subset", "pgd100", "autoattack")


class TrainConfig(_Settings):
    """Local training (Algorithm 1 of the paper when `adversarial` is on)."""

    epochs: int = Field(5, ge=1, description="local epochs")
    # The paper gives no batch size; 64 is ours, recorded with every run.
    batch_size: int = Field(64, ge=1, description="training batch size")
    lr: float = Field(1e-3, gt=0.0, description="Adam learning rate")
    adversarial: bool = Field(
        True, description="adversarial training, Algorithm 1 with PGD (--no-adversarial: the clean baseline)"
    )
    pgd: PgdConfig = PgdConfig()
    # Beyond the paper (off by default): the rare arrhythmias (S, F) weigh more in the loss, by the node's
    # own label counts (no count leaves the site).
    class_weights: Literal["none", "balanced", "sqrt-balanced"] = Field(
        "none",
        description="cross-entropy class weights from the node's label counts: balanced = n / (classes present "
        "x count), sqrt-balanced = its square root; none: the paper's unweighted loss",
    )
    # Beyond the paper (off by default): keep the class weights off the adversarial half, or train with TRADES.
    weighted_half: Literal["both", "clean"] = Field(
        "both",
        description="adversarial training with class weights: the half of each batch the weights apply to "
        "(clean: the adversarial half keeps the unweighted loss)",
    )
    objective: Literal["concat", "trades"] = Field(
        "concat",
        description="adversarial training loss: concat = Algorithm 1, cross-entropy on concat(x, PGD(x)); "
        "trades = TRADES, cross-entropy on x + beta x KL(f(x) || f(x')), x' from PGD on that KL",
    )
    trades_beta: float = Field(6.0, ge=0.0, description="TRADES: the weight of the robustness (KL) term")
    # Beyond the paper (off by default): the rare arrhythmias seen more often instead of weighing more.
    sampling: Literal["shuffle", "balanced", "sqrt-balanced"] = Field(
        "shuffle",
        description="the windows of an epoch: shuffle = each once, in random order (the paper's); balanced = "
        "as many drawn with replacement, each class equally likely; sqrt-balanced = each window's chance "
        "proportional to the square root of its class's balanced weight",
    )
    # Beyond the paper (off by default): a node without S beats, trained with the plain loss, pushes S's logit down
    # and FedAvg carries that into the global model (docs/results/hospitals). The logit-adjusted loss (Menon et al.,
    # 2021) trains on logits + tau x log(the node's class frequencies), so a class the node holds few of is not
    # pushed down for being rare there, and one it holds none of not at all; the model's own logits are read
    # unchanged (balanced error).
    logit_adjustment: float = Field(
        0.0,
        ge=0.0,
        description="logit-adjusted loss: tau x log(the node's own class frequencies) added to the logits of "
        "every cross-entropy term in training, a class the node holds none of left out of its softmax; never at "
        "test or in the attack (0: off, the paper's loss)",
    )
    # A hospital with 1 F beat of 5,222 gives F an offset of log(1/5222) = -8.6: its N beats then hardly keep F's raw
    # logit down, and the global model called 22% of DS2's N beats F (docs/results/hospitals). A floor caps that.
    logit_adjustment_floor: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="logit-adjusted loss: a class frequency under this is raised to it before the log, so a class "
        "a node holds a handful of is not freed of its N beats' pull (0: no floor; a class the node lacks stays "
        "out of its softmax)",
    )
    # Beyond the paper (off by default): FedProx (Li et al., 2020) against the client drift measured on hospitals
    # that hold whole records (docs/results/hospitals).
    proximal_mu: float = Field(
        0.0,
        ge=0.0,
        description="FedProx: mu / 2 x the squared distance of the local weights from the round's global model, "
        "added to every batch's loss (0: off, the paper's local training)",
    )
    seed: int = 0

    @model_validator(mode="after")
    def _options_that_apply(self) -> TrainConfig:
        if self.objective == "trades" and not self.adversarial:
            raise ValueError("objective trades is adversarial training: it cannot be combined with adversarial false")
        if self.logit_adjustment and self.class_weights != "none":
            raise ValueError("logit-adjustment and class-weights both correct the class imbalance: set one of them")
        if self.logit_adjustment_floor and not self.logit_adjustment:
            raise ValueError("logit-adjustment-floor needs logit-adjustment above 0")
        if self.weighted_half == "clean" and (self.class_weights == "none" or self.objective != "concat"):
            raise ValueError("weighted-half clean needs class-weights balanced or sqrt-balanced and objective concat")
        return self


class EvalConfig(_Settings):
    """Evaluation on the test set, clean and under every attack.

    CW stops early per batch, so its result depends on the batch size: it is fixed here and recorded.
    """

    batch_size: int = Field(256, ge=1, description="evaluation batch size; CW's result depends on it")
    attacks: AttackSuite = AttackSuite()
    conditions: tuple[Literal["clean", "pgd", "fgsm", "cw", "bim"], ...] = Field(
        CONDITIONS, description="evaluation conditions"
    )
    standard: StandardAttackConfig = StandardAttackConfig()
    seed: int = 0

    @model_validator(mode="after")
    def _conditions_not_empty(self) -> EvalConfig:
        if not self.conditions:
            raise ValueError("conditions must name at least one of " + ", ".join(CONDITIONS))
        return self


class DefenceConfig(_Settings):
    """What the ServerApp does against a broken or malicious node's update (issue: the trust boundary).

    Every reply is checked before aggregation (when `validate-updates`): exactly the ClientApp's two records and
    its metrics (TRAIN_METRICS, and CLASS_COUNT_METRICS with class-weighted-head) as finite numbers, exactly the
    global model's keys, shapes and dtypes, only finite values, an integer num-examples in 1..max-examples (and
    class counts, integers of at least 0, that sum to it), and an update (reply minus the global model) whose
    L2 norm is at most `norm-factor` times the round's median. A reply that fails is dropped and recorded with
    its reason. A valid reply is counted with at most `examples-factor` times the median of the other replies'
    num-examples. The aggregation is one of Flower's strategies.
    """

    validate_updates: bool = Field(True, description="check every update before aggregation (off: what FedAvg gets)")
    max_examples: int = Field(1_000_000, ge=1, description="the most training windows a reply may claim")
    norm_factor: float = Field(
        10.0, gt=1.0, description="reject an update whose norm exceeds this times the round's median update norm"
    )
    # FedAvg weighs a reply by the count it claims, which no server can check: uncapped, one node claiming 10^6
    # windows beside four of 8,757 holds 97% of the round and can put the global model anywhere inside the norm
    # bound. At 3 it holds at most 3/7 of the paper's five replies; no claim of the committed runs came near it
    # (the largest: 1.34x the others' median, whole-patient shards in docs/results/hospitals).
    examples_factor: float = Field(
        3.0,
        gt=1.0,
        description="count a reply's num-examples as at most this times the median of the round's other claims "
        "(FedAvg's weights; a larger honest site still counts, at that weight)",
    )
    aggregation: Literal["fedavg", "median", "trimmed-mean", "krum", "bulyan"] = Field(
        "fedavg", description="Flower's FedAvg, FedMedian, FedTrimmedAvg, Krum or Bulyan"
    )
    trim_fraction: float = Field(0.2, ge=0.0, lt=0.5, description="trimmed-mean: share cut at each end")
    assumed_malicious: int = Field(1, ge=0, description="krum and bulyan: the malicious nodes to tolerate")


class FederationConfig(_Settings):
    """The Flower run config: `[tool.flwr.app.config]` in pyproject.toml holds exactly these defaults."""

    num_rounds: int = Field(10, ge=1, description="federated rounds")
    num_nodes: int = Field(10, ge=1, description="SuperNodes in the federation")
    nodes_per_round: int = Field(ge=1, description="nodes sampled per round (unset: half of the nodes, rounded up)")
    round_timeout: float = Field(3600.0, gt=0, description="seconds to wait for a round's replies")
    seed: int = Field(0, description="seed of weights, shuffling, sampling and attacks")
    test_path: str = Field("", description="absolute path of the server's test set (test.npz)")
    max_test_windows: int = Field(0, ge=0, description="evaluate on at most this many test windows (0: all)")
    max_train_windows: int = Field(0, ge=0, description="train on at most this many windows per shard (0: all)")
    results_dir: str = Field("", description="absolute path of the run's results directory")
    resume: bool = False
    overlap_evaluation: Literal["auto", "on", "off"] = Field(
        "auto",
        description="evaluate round r while round r+1 trains (same numbers, written in order); auto: on where "
        "the server evaluates on a GPU (on CPU cores shared with the SuperNodes it only competes with training)",
    )
    # Beyond the paper (off by default): FedAvgM (Hsu et al., 2019), Flower's FedAvg with server-side momentum. On
    # whole-record hospitals the global model swings with the five drawn each round (docs/results/hospitals); a
    # momentum beta with server-lr 1 - beta steps as far as FedAvg on average, along the last rounds' averages.
    server_momentum: float = Field(
        0.0,
        ge=0.0,
        lt=1.0,
        description="FedAvgM: the global model moves along momentum x the last step + the round's average update "
        "(0: off, FedAvg's average)",
    )
    server_lr: float = Field(
        1.0, gt=0.0, description="FedAvgM: the share of that step the global model takes (1 with momentum 0: FedAvg)"
    )
    # Beyond the paper (off by default). On whole-record hospitals most of a class's output row is averaged from
    # hospitals that hold none or a handful of it (DS1's S: 386 of 944 beats at one of ten hospitals), which
    # dilutes what the few that hold it teach that row (docs/results/hospitals). Weighting each row by the nodes'
    # windows of its class lets them set it; the nodes must then disclose their class counts.
    class_weighted_head: bool = Field(
        False,
        description="average each class's row of the output layer weighted by the nodes' training windows of that "
        "class (each node then reports its class counts to the server); every other layer as FedAvg",
    )
    train: TrainConfig = TrainConfig()
    evaluate: EvalConfig = EvalConfig()
    defence: DefenceConfig = DefenceConfig()

    @model_validator(mode="before")
    @classmethod
    def _half_the_nodes_by_default(cls, data: object) -> object:
        """Unset, nodes-per-round is half of num-nodes, rounded up (5 of 10, the paper's; 2 of 3)."""
        if isinstance(data, dict) and data.get("nodes-per-round", data.get("nodes_per_round")) is None:
            nodes = data.get("num-nodes", data.get("num_nodes", cls.model_fields["num_nodes"].default))
            if isinstance(nodes, int):
                data = {k: v for k, v in data.items() if k not in ("nodes-per-round", "nodes_per_round")}
                data["nodes-per-round"] = max(1, (nodes + 1) // 2)
        return data

    @model_validator(mode="after")
    def _sample_fits(self) -> FederationConfig:
        if self.nodes_per_round > self.num_nodes:
            raise ValueError(f"nodes-per-round ({self.nodes_per_round}) exceeds num-nodes ({self.num_nodes})")
        if (self.server_momentum or self.server_lr != 1.0) and self.defence.aggregation != "fedavg":
            raise ValueError(
                f"server-momentum and server-lr are FedAvgM's: they need defence.aggregation fedavg "
                f"(got {self.defence.aggregation})"
            )
        if self.class_weighted_head and (
            self.defence.aggregation != "fedavg" or self.server_momentum or self.server_lr != 1.0
        ):
            raise ValueError(
                "class-weighted-head reweights FedAvg's average: it needs defence.aggregation fedavg without "
                f"server-momentum or server-lr (got {self.defence.aggregation}, server-momentum "
                f"{self.server_momentum:g}, server-lr {self.server_lr:g})"
            )
        if self.class_weighted_head and not self.defence.validate_updates:
            raise ValueError(
                "class-weighted-head weighs rows by the nodes' class counts: it needs defence.validate-updates, "
                "which checks them"
            )
        # Bulyan needs 4f + 3 updates a round, Krum 2f + 3 (Flower's checks), f = defence.assumed-malicious.
        needed = {"bulyan": 4, "krum": 2}.get(self.defence.aggregation)
        if needed and self.nodes_per_round < needed * self.defence.assumed_malicious + 3:
            raise ValueError(
                f"defence.aggregation {self.defence.aggregation} with defence.assumed-malicious "
                f"{self.defence.assumed_malicious} needs nodes-per-round >= "
                f"{needed * self.defence.assumed_malicious + 3} (got {self.nodes_per_round})"
            )
        return self

    @property
    def reply_metrics(self) -> tuple[str, ...]:
        """The metrics a node's training reply holds."""
        return TRAIN_METRICS + (CLASS_COUNT_METRICS if self.class_weighted_head else ())

    @classmethod
    def from_run_config(cls, run_config: Mapping[str, object]) -> FederationConfig:
        return cls.from_flat(run_config, "run config")

    def to_run_config(self) -> dict[str, bool | int | float | str]:
        """Flat `key.sub-key = scalar` pairs, as Flower's run config holds them (lists are left out)."""

        def flatten(prefix: str, value: object) -> dict:
            if isinstance(value, dict):
                return {k: v for key, sub in value.items() for k, v in flatten(f"{prefix}{key}.", sub).items()}
            return {prefix[:-1]: value} if isinstance(value, bool | int | float | str) else {}

        return flatten("", self.model_dump(by_alias=True))


class AttackerConfig(_Settings):
    """A malicious or broken participant, for experiments and tests of the server's defences: what a node
    does to its update after training, and the num-examples it claims. Node config keys, like a site's data
    path (a site that wants to attack can change its code anyway; this only makes the attacker reproducible)."""

    poison: Literal["none", "scale", "sign-flip", "nan", "inf", "wrong-keys", "wrong-shape", "wrong-dtype"] = Field(
        "none", description="what the node sends instead of its trained weights"
    )
    poison_scale: float = Field(1e6, description="scale: update = scale x (trained - global)")
    claim_examples: int = Field(0, description="num-examples to claim instead of the true count (0: the truth)")

    def to_node_config(self) -> str:
        """The settings that differ from an honest node, as `flower-supernode --node-config` text."""
        changed = self.model_dump(by_alias=True, exclude_defaults=True)
        return " ".join(f"{key}={json.dumps(value)}" for key, value in changed.items())


class NodeConfig(AttackerConfig):
    """A SuperNode's own settings (`flower-supernode --node-config`)."""

    data_path: Path = Field(description="a prepared shard (.npz) or a directory of WFDB records")
    lead: int | str = AUTO_LEAD
    threads: int = Field(0, ge=0, description="torch threads for local training; 0: torch's default")
    partition_id: int | None = Field(
        None,
        ge=0,
        description="this node's shard or site number: its training seeds and the server's sampling derive "
        "from it, so a run repeats exactly (unset: from Flower's node id, drawn anew at every launch)",
    )

    _lead_index = field_validator("lead", mode="before")(staticmethod(_lead))

    @field_validator("data_path")
    @classmethod
    def _data_exists(cls, path: Path) -> Path:
        if not path.exists():
            raise ValueError(f"{path} does not exist on this node")
        return path

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, object]) -> NodeConfig:
        return cls.from_flat(node_config, "node config")
