"""The ClientApp: a hospital's SuperNode trains the global model on its own data.

Its data path comes from the SuperNode's node config: a prepared shard (.npz), or a directory of WFDB
records (the hospital's own recordings), windowed exactly as `ecg-fat prepare` does. Bad data raises
here: Flower logs the error in the SuperNode's log and sends the server a failed reply, never a
silent zero-weight update.
"""

from __future__ import annotations

import torch
from flwr.app import ArrayRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from client.poison import poisoned
from common.config import CLASS_COUNT_METRICS, TRAIN_METRICS, FederationConfig, NodeConfig
from common.data import Beats, DataError, class_counts, load_beats, read_records
from common.model import EcgCnn, pick_device, reads_rhythm
from common.runtime import tune_allocator
from common.train import train

app = ClientApp()


def local_seed(seed: int, server_round: int, node_id: int) -> int:
    """A different, reproducible seed for every round and node."""
    return seed + 1_000 * server_round + node_id % 1_000


def load_local_data(node: NodeConfig, model: EcgCnn) -> Beats:
    """The node's windows as the consortium's model reads them: with RR features where its weights take them
    (records are windowed so; a shard must have been prepared so)."""
    if node.data_path.is_dir():
        return read_records(node.data_path, lead=node.lead, rhythm=model.rhythm)
    beats = load_beats(node.data_path)
    if beats.x.shape[-1] != model.input_length:
        needed = "--rhythm (window + RR features)" if model.rhythm else "without --rhythm (the window only)"
        raise DataError(
            f"{node.data_path}: windows of {beats.x.shape[-1]} values, but the run's model reads "
            f"{model.input_length}: prepare this node's shard {needed}"
        )
    return beats


@app.query()
def partition(msg: Message, context: Context) -> Message:
    """The server asks each node once for its partition id, to sample the same partitions in every launch."""
    node = NodeConfig.from_node_config(context.node_config)
    answer = {} if node.partition_id is None else {"partition-id": node.partition_id}
    return Message(RecordDict({"partition": MetricRecord(answer)}), reply_to=msg)


@app.train()
def train_round(msg: Message, context: Context) -> Message:
    cfg = FederationConfig.from_run_config(context.run_config)
    node = NodeConfig.from_node_config(context.node_config)
    tune_allocator()
    if node.threads:
        torch.set_num_threads(node.threads)
    server_round = int(msg.content["config"]["server-round"])
    seed = local_seed(
        cfg.train.seed, server_round, node.partition_id if node.partition_id is not None else context.node_id
    )
    sent = msg.content["arrays"].to_torch_state_dict()
    model = EcgCnn(rhythm=reads_rhythm(sent))
    model.load_state_dict(sent)
    beats = load_local_data(node, model).subsample(cfg.max_train_windows, seed)
    history = train(model, beats, cfg.train.model_copy(update={"seed": seed}), pick_device())
    last, seconds = history[-1], sum(h.seconds for h in history)
    print(
        f"round {server_round}: trained on {len(beats)} windows, loss {last.loss:.4f}, "
        f"accuracy {100 * last.accuracy:.2f}%, {seconds:.1f} s",
        flush=True,
    )
    metrics = dict(
        zip(TRAIN_METRICS, (node.claim_examples or len(beats), last.loss, last.accuracy, seconds), strict=True)
    )
    if cfg.class_weighted_head:  # the server weighs each class's output row by them
        metrics |= dict(zip(CLASS_COUNT_METRICS, class_counts(beats.y).values(), strict=True))
    weights = poisoned({k: v.detach().cpu() for k, v in model.state_dict().items()}, sent, node)
    content = RecordDict({"arrays": ArrayRecord(weights), "metrics": MetricRecord(metrics)})
    return Message(content=content, reply_to=msg)
