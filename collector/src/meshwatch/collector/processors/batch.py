"""The ``batch`` processor: accepted for compatibility with OpenTelemetry Collector configs.

In meshwatch a batch is acknowledged to the sender only once it is in every exporter's
durable queue. An in-memory batcher in front of the queues would either acknowledge
data that is not yet durable (and lose it on a crash) or hold the sender's request
open for the whole batching timeout. So batching happens where it costs nothing: each
exporter's workers merge queued records into one send of up to ``batch.max_items`` /
``batch.max_bytes`` (see ``queued_exporter``). This processor passes batches through
unchanged; its settings are validated and, if they differ from the exporters', a
start-up message says where to set them.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from ..batch import Batch
from ..component import Capabilities, ComponentId, Consumer, CreateSettings, Host, Kind, make_factory
from ..config import Duration
from ..signals import Signal

__all__ = ["factory", "BatchProcessorConfig"]


class BatchProcessorConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    send_batch_size: int = Field(8192, ge=0)
    send_batch_max_size: int = Field(0, ge=0)
    timeout: Duration = Field(0.2, ge=0)
    metadata_keys: list[str] = Field(default_factory=list)
    metadata_cardinality_limit: int = Field(1000, ge=0)


class BatchPassThrough:
    def __init__(self, settings: CreateSettings, config: BatchProcessorConfig, next_consumer: Consumer) -> None:
        self.id: ComponentId = settings.id
        self.config = config
        self.next = next_consumer

    def start(self, host: Host) -> None:
        host.logger.info(
            "processor %s: batching is done by each exporter's queue workers (exporters.<id>.batch.max_items); "
            "this processor passes data through",
            self.id,
        )

    def shutdown(self, timeout: float) -> None:
        pass

    def consume(self, batch: Batch) -> None:
        self.next.consume(batch)


factory = make_factory(
    Kind.PROCESSOR,
    "batch",
    signals=frozenset(Signal),
    config_model=BatchProcessorConfig,
    create=BatchPassThrough,
    capabilities=Capabilities(mutates_data=False),
)
