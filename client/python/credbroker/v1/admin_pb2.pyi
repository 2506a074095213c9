from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class AddWorkloadRequest(_message.Message):
    __slots__ = ["pin_exe", "workload"]
    PIN_EXE_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    pin_exe: bool
    workload: Workload
    def __init__(self, workload: _Optional[_Union[Workload, _Mapping]] = ..., pin_exe: bool = ...) -> None: ...

class AddWorkloadResponse(_message.Message):
    __slots__ = ["workload"]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    workload: Workload
    def __init__(self, workload: _Optional[_Union[Workload, _Mapping]] = ...) -> None: ...

class AuditRecord(_message.Message):
    __slots__ = ["code", "comm", "count", "credential", "credential_version", "credits", "credits_saved", "event", "exe", "gid", "latency", "method", "peer_known", "pid", "pidfd", "query_len", "query_mac", "seq", "time", "token_id", "token_label", "tool", "uid", "workload"]
    CODE_FIELD_NUMBER: _ClassVar[int]
    COMM_FIELD_NUMBER: _ClassVar[int]
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_SAVED_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    GID_FIELD_NUMBER: _ClassVar[int]
    LATENCY_FIELD_NUMBER: _ClassVar[int]
    METHOD_FIELD_NUMBER: _ClassVar[int]
    PEER_KNOWN_FIELD_NUMBER: _ClassVar[int]
    PIDFD_FIELD_NUMBER: _ClassVar[int]
    PID_FIELD_NUMBER: _ClassVar[int]
    QUERY_LEN_FIELD_NUMBER: _ClassVar[int]
    QUERY_MAC_FIELD_NUMBER: _ClassVar[int]
    SEQ_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_LABEL_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    UID_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    code: str
    comm: str
    count: int
    credential: str
    credential_version: int
    credits: int
    credits_saved: int
    event: str
    exe: str
    gid: int
    latency: _duration_pb2.Duration
    method: str
    peer_known: bool
    pid: int
    pidfd: bool
    query_len: int
    query_mac: str
    seq: int
    time: _timestamp_pb2.Timestamp
    token_id: str
    token_label: str
    tool: str
    uid: int
    workload: str
    def __init__(self, seq: _Optional[int] = ..., time: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., peer_known: bool = ..., uid: _Optional[int] = ..., gid: _Optional[int] = ..., pid: _Optional[int] = ..., token_id: _Optional[str] = ..., method: _Optional[str] = ..., tool: _Optional[str] = ..., code: _Optional[str] = ..., latency: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., credential: _Optional[str] = ..., credential_version: _Optional[int] = ..., query_len: _Optional[int] = ..., query_mac: _Optional[str] = ..., event: _Optional[str] = ..., credits: _Optional[int] = ..., token_label: _Optional[str] = ..., pidfd: bool = ..., exe: _Optional[str] = ..., comm: _Optional[str] = ..., credits_saved: _Optional[int] = ..., count: _Optional[int] = ..., workload: _Optional[str] = ...) -> None: ...

class Credential(_message.Message):
    __slots__ = ["created_at", "credits_this_month", "limits", "name", "next_due", "overdue", "pending_version", "policy", "previous_version", "rotated_at", "version"]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREDITS_THIS_MONTH_FIELD_NUMBER: _ClassVar[int]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NEXT_DUE_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_FIELD_NUMBER: _ClassVar[int]
    PENDING_VERSION_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_VERSION_FIELD_NUMBER: _ClassVar[int]
    ROTATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    created_at: _timestamp_pb2.Timestamp
    credits_this_month: int
    limits: CredentialLimits
    name: str
    next_due: _timestamp_pb2.Timestamp
    overdue: bool
    pending_version: int
    policy: RotationPolicy
    previous_version: int
    rotated_at: _timestamp_pb2.Timestamp
    version: int
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., rotated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., previous_version: _Optional[int] = ..., pending_version: _Optional[int] = ..., policy: _Optional[_Union[RotationPolicy, _Mapping]] = ..., next_due: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., overdue: bool = ..., limits: _Optional[_Union[CredentialLimits, _Mapping]] = ..., credits_this_month: _Optional[int] = ...) -> None: ...

class CredentialEvent(_message.Message):
    __slots__ = ["at", "by_uid", "detail", "event", "version"]
    AT_FIELD_NUMBER: _ClassVar[int]
    BY_UID_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    at: _timestamp_pb2.Timestamp
    by_uid: int
    detail: str
    event: str
    version: int
    def __init__(self, at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., event: _Optional[str] = ..., version: _Optional[int] = ..., by_uid: _Optional[int] = ..., detail: _Optional[str] = ...) -> None: ...

class CredentialHistoryRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class CredentialHistoryResponse(_message.Message):
    __slots__ = ["credential", "events", "versions"]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    events: _containers.RepeatedCompositeFieldContainer[CredentialEvent]
    versions: _containers.RepeatedCompositeFieldContainer[CredentialVersion]
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[CredentialVersion, _Mapping]]] = ..., events: _Optional[_Iterable[_Union[CredentialEvent, _Mapping]]] = ...) -> None: ...

class CredentialLimits(_message.Message):
    __slots__ = ["burst", "max_wait", "monthly_credits", "rate_limit", "rate_period"]
    BURST_FIELD_NUMBER: _ClassVar[int]
    MAX_WAIT_FIELD_NUMBER: _ClassVar[int]
    MONTHLY_CREDITS_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    burst: int
    max_wait: _duration_pb2.Duration
    monthly_credits: int
    rate_limit: int
    rate_period: _duration_pb2.Duration
    def __init__(self, rate_limit: _Optional[int] = ..., rate_period: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., burst: _Optional[int] = ..., max_wait: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., monthly_credits: _Optional[int] = ...) -> None: ...

class CredentialVersion(_message.Message):
    __slots__ = ["created_at", "created_by_uid", "from_version", "how", "key_id", "state", "verified", "version"]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_UID_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    HOW_FIELD_NUMBER: _ClassVar[int]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    VERIFIED_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    created_at: _timestamp_pb2.Timestamp
    created_by_uid: int
    from_version: int
    how: str
    key_id: int
    state: str
    verified: bool
    version: int
    def __init__(self, version: _Optional[int] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., created_by_uid: _Optional[int] = ..., how: _Optional[str] = ..., verified: bool = ..., state: _Optional[str] = ..., from_version: _Optional[int] = ..., key_id: _Optional[int] = ...) -> None: ...

class DataKeyUsage(_message.Message):
    __slots__ = ["key_id", "primary", "versions"]
    KEY_ID_FIELD_NUMBER: _ClassVar[int]
    PRIMARY_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    key_id: int
    primary: bool
    versions: int
    def __init__(self, key_id: _Optional[int] = ..., primary: bool = ..., versions: _Optional[int] = ...) -> None: ...

class DeleteCredentialRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DeleteCredentialResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class GetTokenRequest(_message.Message):
    __slots__ = ["id"]
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetTokenResponse(_message.Message):
    __slots__ = ["token"]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: TokenInfo
    def __init__(self, token: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...

class ImportCredentialRequest(_message.Message):
    __slots__ = ["name", "source", "value"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    source: str
    value: bytes
    def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ..., source: _Optional[str] = ...) -> None: ...

class ImportCredentialResponse(_message.Message):
    __slots__ = ["credential"]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class ImportCredentialsRequest(_message.Message):
    __slots__ = ["entries", "source"]
    class Entry(_message.Message):
        __slots__ = ["name", "value"]
        NAME_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        name: str
        value: bytes
        def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...
    ENTRIES_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    entries: _containers.RepeatedCompositeFieldContainer[ImportCredentialsRequest.Entry]
    source: str
    def __init__(self, entries: _Optional[_Iterable[_Union[ImportCredentialsRequest.Entry, _Mapping]]] = ..., source: _Optional[str] = ...) -> None: ...

class ImportCredentialsResponse(_message.Message):
    __slots__ = ["credentials"]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.RepeatedCompositeFieldContainer[Credential]
    def __init__(self, credentials: _Optional[_Iterable[_Union[Credential, _Mapping]]] = ...) -> None: ...

class ListAuditRequest(_message.Message):
    __slots__ = ["after_seq", "page_size", "since"]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    page_size: int
    since: _timestamp_pb2.Timestamp
    def __init__(self, after_seq: _Optional[int] = ..., since: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., page_size: _Optional[int] = ...) -> None: ...

class ListAuditResponse(_message.Message):
    __slots__ = ["records"]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class ListCredentialsRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListCredentialsResponse(_message.Message):
    __slots__ = ["credentials"]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    credentials: _containers.RepeatedCompositeFieldContainer[Credential]
    def __init__(self, credentials: _Optional[_Iterable[_Union[Credential, _Mapping]]] = ...) -> None: ...

class ListTokensRequest(_message.Message):
    __slots__ = ["include_expired", "page_size", "page_token"]
    INCLUDE_EXPIRED_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    include_expired: bool
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ..., include_expired: bool = ...) -> None: ...

class ListTokensResponse(_message.Message):
    __slots__ = ["next_page_token", "tokens"]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOKENS_FIELD_NUMBER: _ClassVar[int]
    next_page_token: str
    tokens: _containers.RepeatedCompositeFieldContainer[TokenInfo]
    def __init__(self, tokens: _Optional[_Iterable[_Union[TokenInfo, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ListWorkloadsRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class ListWorkloadsResponse(_message.Message):
    __slots__ = ["workloads"]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    workloads: _containers.RepeatedCompositeFieldContainer[Workload]
    def __init__(self, workloads: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ...) -> None: ...

class MigrateMasterKeyRequest(_message.Message):
    __slots__ = ["to"]
    TO_FIELD_NUMBER: _ClassVar[int]
    to: str
    def __init__(self, to: _Optional[str] = ...) -> None: ...

class MigrateMasterKeyResponse(_message.Message):
    __slots__ = ["key_version", "restart_flag", "to"]
    FROM_FIELD_NUMBER: _ClassVar[int]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    RESTART_FLAG_FIELD_NUMBER: _ClassVar[int]
    TO_FIELD_NUMBER: _ClassVar[int]
    key_version: str
    restart_flag: str
    to: str
    def __init__(self, to: _Optional[str] = ..., key_version: _Optional[str] = ..., restart_flag: _Optional[str] = ..., **kwargs) -> None: ...

class MintTokenRequest(_message.Message):
    __slots__ = ["bind_process", "bind_uid", "budget_credits", "budget_period", "label", "max_uses", "rate_limit", "rate_period", "shared_cache", "tools", "ttl"]
    BIND_PROCESS_FIELD_NUMBER: _ClassVar[int]
    BIND_UID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_CREDITS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    SHARED_CACHE_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    bind_process: bool
    bind_uid: int
    budget_credits: int
    budget_period: str
    label: str
    max_uses: int
    rate_limit: int
    rate_period: _duration_pb2.Duration
    shared_cache: bool
    tools: _containers.RepeatedScalarFieldContainer[str]
    ttl: _duration_pb2.Duration
    def __init__(self, tools: _Optional[_Iterable[str]] = ..., ttl: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., max_uses: _Optional[int] = ..., bind_uid: _Optional[int] = ..., label: _Optional[str] = ..., rate_limit: _Optional[int] = ..., rate_period: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., budget_credits: _Optional[int] = ..., budget_period: _Optional[str] = ..., shared_cache: bool = ..., bind_process: bool = ...) -> None: ...

class MintTokenResponse(_message.Message):
    __slots__ = ["expires_at", "id", "token"]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    expires_at: _timestamp_pb2.Timestamp
    id: str
    token: str
    def __init__(self, token: _Optional[str] = ..., id: _Optional[str] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class PutCredentialRequest(_message.Message):
    __slots__ = ["name", "value"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: bytes
    def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ...) -> None: ...

class PutCredentialResponse(_message.Message):
    __slots__ = ["credential"]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class RekeyRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class RekeyResponse(_message.Message):
    __slots__ = ["new_primary_key_id", "reencrypted", "removed_key_ids", "resumed", "total"]
    NEW_PRIMARY_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REENCRYPTED_FIELD_NUMBER: _ClassVar[int]
    REMOVED_KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    RESUMED_FIELD_NUMBER: _ClassVar[int]
    TOTAL_FIELD_NUMBER: _ClassVar[int]
    new_primary_key_id: int
    reencrypted: int
    removed_key_ids: _containers.RepeatedScalarFieldContainer[int]
    resumed: bool
    total: int
    def __init__(self, new_primary_key_id: _Optional[int] = ..., resumed: bool = ..., reencrypted: _Optional[int] = ..., total: _Optional[int] = ..., removed_key_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class RemoveWorkloadRequest(_message.Message):
    __slots__ = ["name"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class RemoveWorkloadResponse(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class RevokeTokenRequest(_message.Message):
    __slots__ = ["id"]
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class RevokeTokenResponse(_message.Message):
    __slots__ = ["token"]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    token: TokenInfo
    def __init__(self, token: _Optional[_Union[TokenInfo, _Mapping]] = ...) -> None: ...

class RewrapMasterKeyRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class RewrapMasterKeyResponse(_message.Message):
    __slots__ = ["key_version", "previous_key_versions", "rewrapped", "source"]
    KEY_VERSION_FIELD_NUMBER: _ClassVar[int]
    PREVIOUS_KEY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    REWRAPPED_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    key_version: str
    previous_key_versions: _containers.RepeatedScalarFieldContainer[str]
    rewrapped: bool
    source: str
    def __init__(self, source: _Optional[str] = ..., rewrapped: bool = ..., previous_key_versions: _Optional[_Iterable[str]] = ..., key_version: _Optional[str] = ...) -> None: ...

class RollbackCredentialRequest(_message.Message):
    __slots__ = ["name", "to_version"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TO_VERSION_FIELD_NUMBER: _ClassVar[int]
    name: str
    to_version: int
    def __init__(self, name: _Optional[str] = ..., to_version: _Optional[int] = ...) -> None: ...

class RollbackCredentialResponse(_message.Message):
    __slots__ = ["credential", "from_version"]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    FROM_VERSION_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    from_version: int
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ..., from_version: _Optional[int] = ...) -> None: ...

class RotateCredentialRequest(_message.Message):
    __slots__ = ["name", "value", "verify"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VALUE_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    name: str
    value: bytes
    verify: bool
    def __init__(self, name: _Optional[str] = ..., value: _Optional[bytes] = ..., verify: bool = ...) -> None: ...

class RotateCredentialResponse(_message.Message):
    __slots__ = ["credential"]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class RotationPolicy(_message.Message):
    __slots__ = ["max_age", "rotate_command", "verify"]
    MAX_AGE_FIELD_NUMBER: _ClassVar[int]
    ROTATE_COMMAND_FIELD_NUMBER: _ClassVar[int]
    VERIFY_FIELD_NUMBER: _ClassVar[int]
    max_age: _duration_pb2.Duration
    rotate_command: _containers.RepeatedScalarFieldContainer[str]
    verify: bool
    def __init__(self, max_age: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., rotate_command: _Optional[_Iterable[str]] = ..., verify: bool = ...) -> None: ...

class RotationStatus(_message.Message):
    __slots__ = ["auto_rotate", "credential", "failures", "last_error", "next_attempt", "next_due", "overdue", "rotated_at", "version"]
    AUTO_ROTATE_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    NEXT_ATTEMPT_FIELD_NUMBER: _ClassVar[int]
    NEXT_DUE_FIELD_NUMBER: _ClassVar[int]
    OVERDUE_FIELD_NUMBER: _ClassVar[int]
    ROTATED_AT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    auto_rotate: bool
    credential: str
    failures: int
    last_error: str
    next_attempt: _timestamp_pb2.Timestamp
    next_due: _timestamp_pb2.Timestamp
    overdue: bool
    rotated_at: _timestamp_pb2.Timestamp
    version: int
    def __init__(self, credential: _Optional[str] = ..., version: _Optional[int] = ..., rotated_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., next_due: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., overdue: bool = ..., auto_rotate: bool = ..., failures: _Optional[int] = ..., last_error: _Optional[str] = ..., next_attempt: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class SetCredentialLimitsRequest(_message.Message):
    __slots__ = ["limits", "name"]
    LIMITS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    limits: CredentialLimits
    name: str
    def __init__(self, name: _Optional[str] = ..., limits: _Optional[_Union[CredentialLimits, _Mapping]] = ...) -> None: ...

class SetCredentialLimitsResponse(_message.Message):
    __slots__ = ["credential"]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class SetRotationPolicyRequest(_message.Message):
    __slots__ = ["name", "policy"]
    NAME_FIELD_NUMBER: _ClassVar[int]
    POLICY_FIELD_NUMBER: _ClassVar[int]
    name: str
    policy: RotationPolicy
    def __init__(self, name: _Optional[str] = ..., policy: _Optional[_Union[RotationPolicy, _Mapping]] = ...) -> None: ...

class SetRotationPolicyResponse(_message.Message):
    __slots__ = ["credential"]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    credential: Credential
    def __init__(self, credential: _Optional[_Union[Credential, _Mapping]] = ...) -> None: ...

class StatusRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class StatusResponse(_message.Message):
    __slots__ = ["credentials", "data_keys", "data_primary_key_id", "limited_credentials", "live_tokens", "master_key_ids", "master_key_last_kms_contact", "master_key_source", "master_key_versions", "rotation", "schema_version", "started_at", "tools", "uptime", "version", "warnings", "workloads"]
    CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    DATA_KEYS_FIELD_NUMBER: _ClassVar[int]
    DATA_PRIMARY_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    LIMITED_CREDENTIALS_FIELD_NUMBER: _ClassVar[int]
    LIVE_TOKENS_FIELD_NUMBER: _ClassVar[int]
    MASTER_KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    MASTER_KEY_LAST_KMS_CONTACT_FIELD_NUMBER: _ClassVar[int]
    MASTER_KEY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    MASTER_KEY_VERSIONS_FIELD_NUMBER: _ClassVar[int]
    ROTATION_FIELD_NUMBER: _ClassVar[int]
    SCHEMA_VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_AT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    UPTIME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WARNINGS_FIELD_NUMBER: _ClassVar[int]
    WORKLOADS_FIELD_NUMBER: _ClassVar[int]
    credentials: int
    data_keys: _containers.RepeatedCompositeFieldContainer[DataKeyUsage]
    data_primary_key_id: int
    limited_credentials: _containers.RepeatedCompositeFieldContainer[Credential]
    live_tokens: int
    master_key_ids: _containers.RepeatedScalarFieldContainer[int]
    master_key_last_kms_contact: _timestamp_pb2.Timestamp
    master_key_source: str
    master_key_versions: _containers.RepeatedScalarFieldContainer[str]
    rotation: _containers.RepeatedCompositeFieldContainer[RotationStatus]
    schema_version: int
    started_at: _timestamp_pb2.Timestamp
    tools: _containers.RepeatedScalarFieldContainer[str]
    uptime: _duration_pb2.Duration
    version: str
    warnings: _containers.RepeatedScalarFieldContainer[str]
    workloads: _containers.RepeatedCompositeFieldContainer[Workload]
    def __init__(self, version: _Optional[str] = ..., started_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., uptime: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., credentials: _Optional[int] = ..., live_tokens: _Optional[int] = ..., schema_version: _Optional[int] = ..., tools: _Optional[_Iterable[str]] = ..., warnings: _Optional[_Iterable[str]] = ..., master_key_ids: _Optional[_Iterable[int]] = ..., data_primary_key_id: _Optional[int] = ..., data_keys: _Optional[_Iterable[_Union[DataKeyUsage, _Mapping]]] = ..., rotation: _Optional[_Iterable[_Union[RotationStatus, _Mapping]]] = ..., limited_credentials: _Optional[_Iterable[_Union[Credential, _Mapping]]] = ..., workloads: _Optional[_Iterable[_Union[Workload, _Mapping]]] = ..., master_key_source: _Optional[str] = ..., master_key_last_kms_contact: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., master_key_versions: _Optional[_Iterable[str]] = ...) -> None: ...

class TokenInfo(_message.Message):
    __slots__ = ["bind_uid", "budget_credits", "budget_period", "budget_spent", "created_at", "expires_at", "id", "label", "last_used_at", "max_uses", "minted_by_uid", "rate_limit", "rate_period", "revoked", "revoked_at", "shared_cache", "tools", "uses", "uses_left"]
    BIND_UID_FIELD_NUMBER: _ClassVar[int]
    BUDGET_CREDITS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    BUDGET_SPENT_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_AT_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    MINTED_BY_UID_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    REVOKED_AT_FIELD_NUMBER: _ClassVar[int]
    REVOKED_FIELD_NUMBER: _ClassVar[int]
    SHARED_CACHE_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    USES_LEFT_FIELD_NUMBER: _ClassVar[int]
    bind_uid: int
    budget_credits: int
    budget_period: str
    budget_spent: int
    created_at: _timestamp_pb2.Timestamp
    expires_at: _timestamp_pb2.Timestamp
    id: str
    label: str
    last_used_at: _timestamp_pb2.Timestamp
    max_uses: int
    minted_by_uid: int
    rate_limit: int
    rate_period: _duration_pb2.Duration
    revoked: bool
    revoked_at: _timestamp_pb2.Timestamp
    shared_cache: bool
    tools: _containers.RepeatedScalarFieldContainer[str]
    uses: int
    uses_left: int
    def __init__(self, id: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., max_uses: _Optional[int] = ..., uses: _Optional[int] = ..., bind_uid: _Optional[int] = ..., label: _Optional[str] = ..., revoked: bool = ..., revoked_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., minted_by_uid: _Optional[int] = ..., last_used_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., rate_limit: _Optional[int] = ..., rate_period: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., uses_left: _Optional[int] = ..., budget_credits: _Optional[int] = ..., budget_period: _Optional[str] = ..., budget_spent: _Optional[int] = ..., shared_cache: bool = ...) -> None: ...

class UsageRequest(_message.Message):
    __slots__ = ["by", "since"]
    BY_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    by: str
    since: _timestamp_pb2.Timestamp
    def __init__(self, by: _Optional[str] = ..., since: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class UsageResponse(_message.Message):
    __slots__ = ["credits_saved", "rows"]
    CREDITS_SAVED_FIELD_NUMBER: _ClassVar[int]
    ROWS_FIELD_NUMBER: _ClassVar[int]
    credits_saved: int
    rows: _containers.RepeatedCompositeFieldContainer[UsageRow]
    def __init__(self, rows: _Optional[_Iterable[_Union[UsageRow, _Mapping]]] = ..., credits_saved: _Optional[int] = ...) -> None: ...

class UsageRow(_message.Message):
    __slots__ = ["cache_hits", "calls", "credits", "errors", "key", "label"]
    CACHE_HITS_FIELD_NUMBER: _ClassVar[int]
    CALLS_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    ERRORS_FIELD_NUMBER: _ClassVar[int]
    KEY_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    cache_hits: int
    calls: int
    credits: int
    errors: int
    key: str
    label: str
    def __init__(self, key: _Optional[str] = ..., label: _Optional[str] = ..., calls: _Optional[int] = ..., credits: _Optional[int] = ..., cache_hits: _Optional[int] = ..., errors: _Optional[int] = ...) -> None: ...

class VerifyAuditRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class VerifyAuditResponse(_message.Message):
    __slots__ = ["bad_seq", "checked", "first_seq", "last_seq", "ok", "problem"]
    BAD_SEQ_FIELD_NUMBER: _ClassVar[int]
    CHECKED_FIELD_NUMBER: _ClassVar[int]
    FIRST_SEQ_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQ_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    PROBLEM_FIELD_NUMBER: _ClassVar[int]
    bad_seq: int
    checked: int
    first_seq: int
    last_seq: int
    ok: bool
    problem: str
    def __init__(self, ok: bool = ..., checked: _Optional[int] = ..., first_seq: _Optional[int] = ..., last_seq: _Optional[int] = ..., bad_seq: _Optional[int] = ..., problem: _Optional[str] = ...) -> None: ...

class WatchAuditRequest(_message.Message):
    __slots__ = ["after_seq", "since"]
    AFTER_SEQ_FIELD_NUMBER: _ClassVar[int]
    SINCE_FIELD_NUMBER: _ClassVar[int]
    after_seq: int
    since: _timestamp_pb2.Timestamp
    def __init__(self, after_seq: _Optional[int] = ..., since: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class WatchAuditResponse(_message.Message):
    __slots__ = ["records"]
    RECORDS_FIELD_NUMBER: _ClassVar[int]
    records: _containers.RepeatedCompositeFieldContainer[AuditRecord]
    def __init__(self, records: _Optional[_Iterable[_Union[AuditRecord, _Mapping]]] = ...) -> None: ...

class Workload(_message.Message):
    __slots__ = ["budget_credits", "budget_period", "created_at", "created_by_uid", "exe", "exe_sha256", "gids", "label", "max_uses", "name", "rate_limit", "rate_period", "tools", "ttl", "uids", "unit"]
    BUDGET_CREDITS_FIELD_NUMBER: _ClassVar[int]
    BUDGET_PERIOD_FIELD_NUMBER: _ClassVar[int]
    CREATED_AT_FIELD_NUMBER: _ClassVar[int]
    CREATED_BY_UID_FIELD_NUMBER: _ClassVar[int]
    EXE_FIELD_NUMBER: _ClassVar[int]
    EXE_SHA256_FIELD_NUMBER: _ClassVar[int]
    GIDS_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_FIELD_NUMBER: _ClassVar[int]
    RATE_PERIOD_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TTL_FIELD_NUMBER: _ClassVar[int]
    UIDS_FIELD_NUMBER: _ClassVar[int]
    UNIT_FIELD_NUMBER: _ClassVar[int]
    budget_credits: int
    budget_period: str
    created_at: _timestamp_pb2.Timestamp
    created_by_uid: int
    exe: str
    exe_sha256: str
    gids: _containers.RepeatedScalarFieldContainer[int]
    label: str
    max_uses: int
    name: str
    rate_limit: int
    rate_period: _duration_pb2.Duration
    tools: _containers.RepeatedScalarFieldContainer[str]
    ttl: _duration_pb2.Duration
    uids: _containers.RepeatedScalarFieldContainer[int]
    unit: str
    def __init__(self, name: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., uids: _Optional[_Iterable[int]] = ..., gids: _Optional[_Iterable[int]] = ..., exe: _Optional[str] = ..., exe_sha256: _Optional[str] = ..., unit: _Optional[str] = ..., ttl: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., max_uses: _Optional[int] = ..., budget_credits: _Optional[int] = ..., budget_period: _Optional[str] = ..., rate_limit: _Optional[int] = ..., rate_period: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., label: _Optional[str] = ..., created_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., created_by_uid: _Optional[int] = ...) -> None: ...
