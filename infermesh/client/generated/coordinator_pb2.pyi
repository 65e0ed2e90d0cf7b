from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Gpu(_message.Message):
    __slots__ = ("index", "uuid", "name", "memory_bytes")
    INDEX_FIELD_NUMBER: _ClassVar[int]
    UUID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    index: int
    uuid: str
    name: str
    memory_bytes: int
    def __init__(self, index: _Optional[int] = ..., uuid: _Optional[str] = ..., name: _Optional[str] = ..., memory_bytes: _Optional[int] = ...) -> None: ...

class NodeSpec(_message.Message):
    __slots__ = ("node_id", "hostname", "cell", "rack", "labels", "gpus", "no_gpu_reason", "cpus", "memory_bytes", "addresses", "slots")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    HOSTNAME_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    RACK_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    GPUS_FIELD_NUMBER: _ClassVar[int]
    NO_GPU_REASON_FIELD_NUMBER: _ClassVar[int]
    CPUS_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    hostname: str
    cell: str
    rack: str
    labels: _containers.ScalarMap[str, str]
    gpus: _containers.RepeatedCompositeFieldContainer[Gpu]
    no_gpu_reason: str
    cpus: int
    memory_bytes: int
    addresses: _containers.RepeatedScalarFieldContainer[str]
    slots: int
    def __init__(self, node_id: _Optional[str] = ..., hostname: _Optional[str] = ..., cell: _Optional[str] = ..., rack: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., gpus: _Optional[_Iterable[_Union[Gpu, _Mapping]]] = ..., no_gpu_reason: _Optional[str] = ..., cpus: _Optional[int] = ..., memory_bytes: _Optional[int] = ..., addresses: _Optional[_Iterable[str]] = ..., slots: _Optional[int] = ...) -> None: ...

class Node(_message.Message):
    __slots__ = ("spec", "status", "status_since", "status_reason", "epoch", "used_slots", "last_heartbeat", "jobs", "admin", "health", "health_reason")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    STATUS_SINCE_FIELD_NUMBER: _ClassVar[int]
    STATUS_REASON_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    USED_SLOTS_FIELD_NUMBER: _ClassVar[int]
    LAST_HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    ADMIN_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    HEALTH_REASON_FIELD_NUMBER: _ClassVar[int]
    spec: NodeSpec
    status: str
    status_since: float
    status_reason: str
    epoch: int
    used_slots: int
    last_heartbeat: float
    jobs: _containers.RepeatedScalarFieldContainer[str]
    admin: str
    health: str
    health_reason: str
    def __init__(self, spec: _Optional[_Union[NodeSpec, _Mapping]] = ..., status: _Optional[str] = ..., status_since: _Optional[float] = ..., status_reason: _Optional[str] = ..., epoch: _Optional[int] = ..., used_slots: _Optional[int] = ..., last_heartbeat: _Optional[float] = ..., jobs: _Optional[_Iterable[str]] = ..., admin: _Optional[str] = ..., health: _Optional[str] = ..., health_reason: _Optional[str] = ...) -> None: ...

class Signal(_message.Message):
    __slots__ = ("name", "labels", "value", "age_s")
    NAME_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    AGE_S_FIELD_NUMBER: _ClassVar[int]
    name: str
    labels: str
    value: float
    age_s: float
    def __init__(self, name: _Optional[str] = ..., labels: _Optional[str] = ..., value: _Optional[float] = ..., age_s: _Optional[float] = ...) -> None: ...

class NodeDetail(_message.Message):
    __slots__ = ("node", "signals", "stale", "events")
    NODE_FIELD_NUMBER: _ClassVar[int]
    SIGNALS_FIELD_NUMBER: _ClassVar[int]
    STALE_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    node: Node
    signals: _containers.RepeatedCompositeFieldContainer[Signal]
    stale: _containers.RepeatedScalarFieldContainer[str]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, node: _Optional[_Union[Node, _Mapping]] = ..., signals: _Optional[_Iterable[_Union[Signal, _Mapping]]] = ..., stale: _Optional[_Iterable[str]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class RegisterRequest(_message.Message):
    __slots__ = ("spec", "epoch")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    spec: NodeSpec
    epoch: int
    def __init__(self, spec: _Optional[_Union[NodeSpec, _Mapping]] = ..., epoch: _Optional[int] = ...) -> None: ...

class RegisterResponse(_message.Message):
    __slots__ = ("epoch", "heartbeat_interval_s", "cell")
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_INTERVAL_S_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    epoch: int
    heartbeat_interval_s: float
    cell: str
    def __init__(self, epoch: _Optional[int] = ..., heartbeat_interval_s: _Optional[float] = ..., cell: _Optional[str] = ...) -> None: ...

class TelemetryBatch(_message.Message):
    __slots__ = ("name", "value", "ts", "labels")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    name: _containers.RepeatedScalarFieldContainer[str]
    value: _containers.RepeatedScalarFieldContainer[float]
    ts: _containers.RepeatedScalarFieldContainer[float]
    labels: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[_Iterable[str]] = ..., value: _Optional[_Iterable[float]] = ..., ts: _Optional[_Iterable[float]] = ..., labels: _Optional[_Iterable[str]] = ...) -> None: ...

class JobReport(_message.Message):
    __slots__ = ("job_id", "state", "exit_code", "message", "step", "step_ts", "restarts")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    EXIT_CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEP_TS_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    state: str
    exit_code: int
    message: str
    step: int
    step_ts: float
    restarts: int
    def __init__(self, job_id: _Optional[str] = ..., state: _Optional[str] = ..., exit_code: _Optional[int] = ..., message: _Optional[str] = ..., step: _Optional[int] = ..., step_ts: _Optional[float] = ..., restarts: _Optional[int] = ...) -> None: ...

class LogLine(_message.Message):
    __slots__ = ("job_id", "node_id", "rank", "text", "ts", "seq")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    RANK_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    node_id: str
    rank: int
    text: str
    ts: float
    seq: int
    def __init__(self, job_id: _Optional[str] = ..., node_id: _Optional[str] = ..., rank: _Optional[int] = ..., text: _Optional[str] = ..., ts: _Optional[float] = ..., seq: _Optional[int] = ...) -> None: ...

class LogBatch(_message.Message):
    __slots__ = ("lines",)
    LINES_FIELD_NUMBER: _ClassVar[int]
    lines: _containers.RepeatedCompositeFieldContainer[LogLine]
    def __init__(self, lines: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ...) -> None: ...

class ServingEndpoint(_message.Message):
    __slots__ = ("url", "kind", "model", "node_id", "node_status", "health")
    URL_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_STATUS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    url: str
    kind: str
    model: str
    node_id: str
    node_status: str
    health: str
    def __init__(self, url: _Optional[str] = ..., kind: _Optional[str] = ..., model: _Optional[str] = ..., node_id: _Optional[str] = ..., node_status: _Optional[str] = ..., health: _Optional[str] = ...) -> None: ...

class AgentHeartbeat(_message.Message):
    __slots__ = ("node_id", "epoch", "seq", "sent_at", "telemetry", "jobs", "logs", "endpoints", "want_ack")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    EPOCH_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    SENT_AT_FIELD_NUMBER: _ClassVar[int]
    TELEMETRY_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    LOGS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    WANT_ACK_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    epoch: int
    seq: int
    sent_at: float
    telemetry: TelemetryBatch
    jobs: _containers.RepeatedCompositeFieldContainer[JobReport]
    logs: _containers.RepeatedCompositeFieldContainer[LogLine]
    endpoints: _containers.RepeatedCompositeFieldContainer[ServingEndpoint]
    want_ack: bool
    def __init__(self, node_id: _Optional[str] = ..., epoch: _Optional[int] = ..., seq: _Optional[int] = ..., sent_at: _Optional[float] = ..., telemetry: _Optional[_Union[TelemetryBatch, _Mapping]] = ..., jobs: _Optional[_Iterable[_Union[JobReport, _Mapping]]] = ..., logs: _Optional[_Iterable[_Union[LogLine, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[ServingEndpoint, _Mapping]]] = ..., want_ack: _Optional[bool] = ...) -> None: ...

class Assignment(_message.Message):
    __slots__ = ("job_id", "spec", "rdzv_endpoint")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    RDZV_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: JobSpec
    rdzv_endpoint: str
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., rdzv_endpoint: _Optional[str] = ...) -> None: ...

class CollectivePlan(_message.Message):
    __slots__ = ("job_id", "version", "algorithm", "compression", "fusion_bytes", "predicted_s", "reason", "planned_at", "probe")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    ALGORITHM_FIELD_NUMBER: _ClassVar[int]
    COMPRESSION_FIELD_NUMBER: _ClassVar[int]
    FUSION_BYTES_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    PLANNED_AT_FIELD_NUMBER: _ClassVar[int]
    PROBE_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    version: int
    algorithm: str
    compression: str
    fusion_bytes: int
    predicted_s: float
    reason: str
    planned_at: float
    probe: bool
    def __init__(self, job_id: _Optional[str] = ..., version: _Optional[int] = ..., algorithm: _Optional[str] = ..., compression: _Optional[str] = ..., fusion_bytes: _Optional[int] = ..., predicted_s: _Optional[float] = ..., reason: _Optional[str] = ..., planned_at: _Optional[float] = ..., probe: _Optional[bool] = ...) -> None: ...

class CoordinatorMessage(_message.Message):
    __slots__ = ("ack_seq", "received_at", "assign", "stop_jobs", "fenced", "plans")
    ACK_SEQ_FIELD_NUMBER: _ClassVar[int]
    RECEIVED_AT_FIELD_NUMBER: _ClassVar[int]
    ASSIGN_FIELD_NUMBER: _ClassVar[int]
    STOP_JOBS_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    PLANS_FIELD_NUMBER: _ClassVar[int]
    ack_seq: int
    received_at: float
    assign: _containers.RepeatedCompositeFieldContainer[Assignment]
    stop_jobs: _containers.RepeatedScalarFieldContainer[str]
    fenced: str
    plans: _containers.RepeatedCompositeFieldContainer[CollectivePlan]
    def __init__(self, ack_seq: _Optional[int] = ..., received_at: _Optional[float] = ..., assign: _Optional[_Iterable[_Union[Assignment, _Mapping]]] = ..., stop_jobs: _Optional[_Iterable[str]] = ..., fenced: _Optional[str] = ..., plans: _Optional[_Iterable[_Union[CollectivePlan, _Mapping]]] = ...) -> None: ...

class ListNodesRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListNodesResponse(_message.Message):
    __slots__ = ("nodes",)
    NODES_FIELD_NUMBER: _ClassVar[int]
    nodes: _containers.RepeatedCompositeFieldContainer[Node]
    def __init__(self, nodes: _Optional[_Iterable[_Union[Node, _Mapping]]] = ...) -> None: ...

class GetNodeRequest(_message.Message):
    __slots__ = ("node_id", "max_age_s")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_AGE_S_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    max_age_s: float
    def __init__(self, node_id: _Optional[str] = ..., max_age_s: _Optional[float] = ...) -> None: ...

class SetNodeStateRequest(_message.Message):
    __slots__ = ("node_id", "action", "reason")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ACTION_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    action: str
    reason: str
    def __init__(self, node_id: _Optional[str] = ..., action: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class JobSpec(_message.Message):
    __slots__ = ("name", "entrypoint", "args", "nproc_per_node", "nodes_min", "nodes_max", "workdir", "env", "max_restarts", "constraints", "cell", "tenant", "launcher_args")
    class EnvEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    class ConstraintsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAME_FIELD_NUMBER: _ClassVar[int]
    ENTRYPOINT_FIELD_NUMBER: _ClassVar[int]
    ARGS_FIELD_NUMBER: _ClassVar[int]
    NPROC_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    NODES_MIN_FIELD_NUMBER: _ClassVar[int]
    NODES_MAX_FIELD_NUMBER: _ClassVar[int]
    WORKDIR_FIELD_NUMBER: _ClassVar[int]
    ENV_FIELD_NUMBER: _ClassVar[int]
    MAX_RESTARTS_FIELD_NUMBER: _ClassVar[int]
    CONSTRAINTS_FIELD_NUMBER: _ClassVar[int]
    CELL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    LAUNCHER_ARGS_FIELD_NUMBER: _ClassVar[int]
    name: str
    entrypoint: str
    args: _containers.RepeatedScalarFieldContainer[str]
    nproc_per_node: int
    nodes_min: int
    nodes_max: int
    workdir: str
    env: _containers.ScalarMap[str, str]
    max_restarts: int
    constraints: _containers.ScalarMap[str, str]
    cell: str
    tenant: str
    launcher_args: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, name: _Optional[str] = ..., entrypoint: _Optional[str] = ..., args: _Optional[_Iterable[str]] = ..., nproc_per_node: _Optional[int] = ..., nodes_min: _Optional[int] = ..., nodes_max: _Optional[int] = ..., workdir: _Optional[str] = ..., env: _Optional[_Mapping[str, str]] = ..., max_restarts: _Optional[int] = ..., constraints: _Optional[_Mapping[str, str]] = ..., cell: _Optional[str] = ..., tenant: _Optional[str] = ..., launcher_args: _Optional[_Iterable[str]] = ...) -> None: ...

class Job(_message.Message):
    __slots__ = ("job_id", "spec", "status", "created_at", "updated_at", "restarts", "world_size", "nodes", "step", "steps_per_s", "message", "round", "plan")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    SPEC_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    UPDATED_AT_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    STEP_FIELD_NUMBER: _ClassVar[int]
    STEPS_PER_S_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    ROUND_FIELD_NUMBER: _ClassVar[int]
    PLAN_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    spec: JobSpec
    status: str
    created_at: float
    updated_at: float
    restarts: int
    world_size: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    step: int
    steps_per_s: float
    message: str
    round: int
    plan: CollectivePlan
    def __init__(self, job_id: _Optional[str] = ..., spec: _Optional[_Union[JobSpec, _Mapping]] = ..., status: _Optional[str] = ..., created_at: _Optional[float] = ..., updated_at: _Optional[float] = ..., restarts: _Optional[int] = ..., world_size: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ..., step: _Optional[int] = ..., steps_per_s: _Optional[float] = ..., message: _Optional[str] = ..., round: _Optional[int] = ..., plan: _Optional[_Union[CollectivePlan, _Mapping]] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("seq", "ts", "kind", "subject", "from_state", "to_state", "reason")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    FROM_STATE_FIELD_NUMBER: _ClassVar[int]
    TO_STATE_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ts: float
    kind: str
    subject: str
    from_state: str
    to_state: str
    reason: str
    def __init__(self, seq: _Optional[int] = ..., ts: _Optional[float] = ..., kind: _Optional[str] = ..., subject: _Optional[str] = ..., from_state: _Optional[str] = ..., to_state: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...

class SubmitJobRequest(_message.Message):
    __slots__ = ("spec", "dry_run")
    SPEC_FIELD_NUMBER: _ClassVar[int]
    DRY_RUN_FIELD_NUMBER: _ClassVar[int]
    spec: JobSpec
    dry_run: bool
    def __init__(self, spec: _Optional[_Union[JobSpec, _Mapping]] = ..., dry_run: _Optional[bool] = ...) -> None: ...

class SubmitJobResponse(_message.Message):
    __slots__ = ("job", "placement")
    JOB_FIELD_NUMBER: _ClassVar[int]
    PLACEMENT_FIELD_NUMBER: _ClassVar[int]
    job: Job
    placement: str
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., placement: _Optional[str] = ...) -> None: ...

class ListJobsRequest(_message.Message):
    __slots__ = ("status", "limit")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    status: str
    limit: int
    def __init__(self, status: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListJobsResponse(_message.Message):
    __slots__ = ("jobs",)
    JOBS_FIELD_NUMBER: _ClassVar[int]
    jobs: _containers.RepeatedCompositeFieldContainer[Job]
    def __init__(self, jobs: _Optional[_Iterable[_Union[Job, _Mapping]]] = ...) -> None: ...

class JobRequest(_message.Message):
    __slots__ = ("job_id",)
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    def __init__(self, job_id: _Optional[str] = ...) -> None: ...

class JobDetail(_message.Message):
    __slots__ = ("job", "events")
    JOB_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    job: Job
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, job: _Optional[_Union[Job, _Mapping]] = ..., events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class LogsRequest(_message.Message):
    __slots__ = ("job_id", "follow", "after_seq", "tail")
    JOB_ID_FIELD_NUMBER: _ClassVar[int]
    FOLLOW_FIELD_NUMBER: _ClassVar[int]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    TAIL_FIELD_NUMBER: _ClassVar[int]
    job_id: str
    follow: bool
    after_seq: int
    tail: int
    def __init__(self, job_id: _Optional[str] = ..., follow: _Optional[bool] = ..., after_seq: _Optional[int] = ..., tail: _Optional[int] = ...) -> None: ...

class ListEventsRequest(_message.Message):
    __slots__ = ("subject", "limit")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    limit: int
    def __init__(self, subject: _Optional[str] = ..., limit: _Optional[int] = ...) -> None: ...

class ListEventsResponse(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class ListEndpointsRequest(_message.Message):
    __slots__ = ("kind",)
    KIND_FIELD_NUMBER: _ClassVar[int]
    kind: str
    def __init__(self, kind: _Optional[str] = ...) -> None: ...

class ListEndpointsResponse(_message.Message):
    __slots__ = ("endpoints",)
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    endpoints: _containers.RepeatedCompositeFieldContainer[ServingEndpoint]
    def __init__(self, endpoints: _Optional[_Iterable[_Union[ServingEndpoint, _Mapping]]] = ...) -> None: ...

class StatsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class StatsResponse(_message.Message):
    __slots__ = ("cell", "nodes_by_status", "jobs_by_status", "slots_total", "slots_used", "uptime_s", "heartbeats", "store_revision", "store")
    class NodesByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    class JobsByStatusEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: int
        def __init__(self, key: _Optional[str] = ..., value: _Optional[int] = ...) -> None: ...
    CELL_FIELD_NUMBER: _ClassVar[int]
    NODES_BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    JOBS_BY_STATUS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_TOTAL_FIELD_NUMBER: _ClassVar[int]
    SLOTS_USED_FIELD_NUMBER: _ClassVar[int]
    UPTIME_S_FIELD_NUMBER: _ClassVar[int]
    HEARTBEATS_FIELD_NUMBER: _ClassVar[int]
    STORE_REVISION_FIELD_NUMBER: _ClassVar[int]
    STORE_FIELD_NUMBER: _ClassVar[int]
    cell: str
    nodes_by_status: _containers.ScalarMap[str, int]
    jobs_by_status: _containers.ScalarMap[str, int]
    slots_total: int
    slots_used: int
    uptime_s: float
    heartbeats: int
    store_revision: int
    store: str
    def __init__(self, cell: _Optional[str] = ..., nodes_by_status: _Optional[_Mapping[str, int]] = ..., jobs_by_status: _Optional[_Mapping[str, int]] = ..., slots_total: _Optional[int] = ..., slots_used: _Optional[int] = ..., uptime_s: _Optional[float] = ..., heartbeats: _Optional[int] = ..., store_revision: _Optional[int] = ..., store: _Optional[str] = ...) -> None: ...

class JoinRequest(_message.Message):
    __slots__ = ("run_id", "node_id", "addr", "port", "nproc_per_node", "nodes_min", "nodes_max", "last_call_s", "timeout_s")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ADDR_FIELD_NUMBER: _ClassVar[int]
    PORT_FIELD_NUMBER: _ClassVar[int]
    NPROC_PER_NODE_FIELD_NUMBER: _ClassVar[int]
    NODES_MIN_FIELD_NUMBER: _ClassVar[int]
    NODES_MAX_FIELD_NUMBER: _ClassVar[int]
    LAST_CALL_S_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    node_id: str
    addr: str
    port: int
    nproc_per_node: int
    nodes_min: int
    nodes_max: int
    last_call_s: float
    timeout_s: float
    def __init__(self, run_id: _Optional[str] = ..., node_id: _Optional[str] = ..., addr: _Optional[str] = ..., port: _Optional[int] = ..., nproc_per_node: _Optional[int] = ..., nodes_min: _Optional[int] = ..., nodes_max: _Optional[int] = ..., last_call_s: _Optional[float] = ..., timeout_s: _Optional[float] = ...) -> None: ...

class JoinResponse(_message.Message):
    __slots__ = ("round", "group_rank", "group_world_size", "master_addr", "master_port", "nodes")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    GROUP_RANK_FIELD_NUMBER: _ClassVar[int]
    GROUP_WORLD_SIZE_FIELD_NUMBER: _ClassVar[int]
    MASTER_ADDR_FIELD_NUMBER: _ClassVar[int]
    MASTER_PORT_FIELD_NUMBER: _ClassVar[int]
    NODES_FIELD_NUMBER: _ClassVar[int]
    round: int
    group_rank: int
    group_world_size: int
    master_addr: str
    master_port: int
    nodes: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, round: _Optional[int] = ..., group_rank: _Optional[int] = ..., group_world_size: _Optional[int] = ..., master_addr: _Optional[str] = ..., master_port: _Optional[int] = ..., nodes: _Optional[_Iterable[str]] = ...) -> None: ...

class RendezvousRequest(_message.Message):
    __slots__ = ("run_id", "node_id")
    RUN_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    run_id: str
    node_id: str
    def __init__(self, run_id: _Optional[str] = ..., node_id: _Optional[str] = ...) -> None: ...

class RendezvousStatus(_message.Message):
    __slots__ = ("round", "nodes_waiting", "closed")
    ROUND_FIELD_NUMBER: _ClassVar[int]
    NODES_WAITING_FIELD_NUMBER: _ClassVar[int]
    CLOSED_FIELD_NUMBER: _ClassVar[int]
    round: int
    nodes_waiting: int
    closed: bool
    def __init__(self, round: _Optional[int] = ..., nodes_waiting: _Optional[int] = ..., closed: _Optional[bool] = ...) -> None: ...

class GrantRecord(_message.Message):
    __slots__ = ("subject", "role", "tenant", "granted_by", "granted_at", "source")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    GRANTED_BY_FIELD_NUMBER: _ClassVar[int]
    GRANTED_AT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    subject: str
    role: str
    tenant: str
    granted_by: str
    granted_at: float
    source: str
    def __init__(self, subject: _Optional[str] = ..., role: _Optional[str] = ..., tenant: _Optional[str] = ..., granted_by: _Optional[str] = ..., granted_at: _Optional[float] = ..., source: _Optional[str] = ...) -> None: ...

class GrantRequest(_message.Message):
    __slots__ = ("subject", "role", "tenant")
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    role: str
    tenant: str
    def __init__(self, subject: _Optional[str] = ..., role: _Optional[str] = ..., tenant: _Optional[str] = ...) -> None: ...

class RevokeResponse(_message.Message):
    __slots__ = ("removed",)
    REMOVED_FIELD_NUMBER: _ClassVar[int]
    removed: bool
    def __init__(self, removed: _Optional[bool] = ...) -> None: ...

class ListGrantsRequest(_message.Message):
    __slots__ = ("subject",)
    SUBJECT_FIELD_NUMBER: _ClassVar[int]
    subject: str
    def __init__(self, subject: _Optional[str] = ...) -> None: ...

class ListGrantsResponse(_message.Message):
    __slots__ = ("grants",)
    GRANTS_FIELD_NUMBER: _ClassVar[int]
    grants: _containers.RepeatedCompositeFieldContainer[GrantRecord]
    def __init__(self, grants: _Optional[_Iterable[_Union[GrantRecord, _Mapping]]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ("seq", "ts", "principal", "method", "target", "result", "detail", "tenant", "source")
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TS_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    TARGET_FIELD_NUMBER: _ClassVar[int]
    RESULT_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    seq: int
    ts: float
    principal: str
    method: str
    target: str
    result: str
    detail: str
    tenant: str
    source: str
    def __init__(self, seq: _Optional[int] = ..., ts: _Optional[float] = ..., principal: _Optional[str] = ..., method: _Optional[str] = ..., target: _Optional[str] = ..., result: _Optional[str] = ..., detail: _Optional[str] = ..., tenant: _Optional[str] = ..., source: _Optional[str] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ("principal", "method", "limit", "since")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    principal: str
    method: str
    limit: int
    since: float
    def __init__(self, principal: _Optional[str] = ..., method: _Optional[str] = ..., limit: _Optional[int] = ..., since: _Optional[float] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ("records",)
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class Quota(_message.Message):
    __slots__ = ("tenant", "max_jobs", "max_slots")
    TENANT_FIELD_NUMBER: _ClassVar[int]
    MAX_JOBS_FIELD_NUMBER: _ClassVar[int]
    MAX_SLOTS_FIELD_NUMBER: _ClassVar[int]
    tenant: str
    max_jobs: int
    max_slots: int
    def __init__(self, tenant: _Optional[str] = ..., max_jobs: _Optional[int] = ..., max_slots: _Optional[int] = ...) -> None: ...

class QuotaUsage(_message.Message):
    __slots__ = ("quota", "jobs", "slots")
    QUOTA_FIELD_NUMBER: _ClassVar[int]
    JOBS_FIELD_NUMBER: _ClassVar[int]
    SLOTS_FIELD_NUMBER: _ClassVar[int]
    quota: Quota
    jobs: int
    slots: int
    def __init__(self, quota: _Optional[_Union[Quota, _Mapping]] = ..., jobs: _Optional[int] = ..., slots: _Optional[int] = ...) -> None: ...

class ListQuotasRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListQuotasResponse(_message.Message):
    __slots__ = ("quotas",)
    QUOTAS_FIELD_NUMBER: _ClassVar[int]
    quotas: _containers.RepeatedCompositeFieldContainer[QuotaUsage]
    def __init__(self, quotas: _Optional[_Iterable[_Union[QuotaUsage, _Mapping]]] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ("principal", "spiffe_id", "source", "roles", "tenant", "groups", "expires_at")
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    SPIFFE_ID_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    ROLES_FIELD_NUMBER: _ClassVar[int]
    TENANT_FIELD_NUMBER: _ClassVar[int]
    GROUPS_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    principal: str
    spiffe_id: str
    source: str
    roles: _containers.RepeatedScalarFieldContainer[str]
    tenant: str
    groups: _containers.RepeatedScalarFieldContainer[str]
    expires_at: float
    def __init__(self, principal: _Optional[str] = ..., spiffe_id: _Optional[str] = ..., source: _Optional[str] = ..., roles: _Optional[_Iterable[str]] = ..., tenant: _Optional[str] = ..., groups: _Optional[_Iterable[str]] = ..., expires_at: _Optional[float] = ...) -> None: ...
