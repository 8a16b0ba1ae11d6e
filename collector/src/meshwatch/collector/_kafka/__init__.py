"""What the ``kafka`` exporter and receiver share: client settings, the wire encodings, the partitioner.

Wire-compatible with the OpenTelemetry Collector contrib ``kafkaexporter`` / ``kafkareceiver``
(v0.165): a record's value is one ``Export*ServiceRequest`` as OTLP protobuf (``otlp_proto``)
or OTLP/JSON (``otlp_json``); with ``partition_traces_by_id`` a traces record holds one trace
and its key is the trace id in lowercase hex, placed on the partition Sarama's (and franz-go's
``SaramaCompatHasher``) FNV-1a hash gives, so both collectors put a trace on the same partition.
"""

from .client import ClientSettings, SaslSettings, client_config
from .encoding import DEFAULT_TOPICS, Encoding, fit, marshal, split_by_trace, unmarshal
from .partition import sarama_partition

__all__ = [
    "ClientSettings",
    "SaslSettings",
    "client_config",
    "DEFAULT_TOPICS",
    "Encoding",
    "fit",
    "marshal",
    "split_by_trace",
    "unmarshal",
    "sarama_partition",
]
