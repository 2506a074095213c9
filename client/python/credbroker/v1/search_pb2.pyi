from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import struct_pb2 as _struct_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from typing import ClassVar as _ClassVar, Iterable as _Iterable, Mapping as _Mapping, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class FetchTokenRequest(_message.Message):
    __slots__ = ["tools"]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, tools: _Optional[_Iterable[str]] = ...) -> None: ...

class FetchTokenResponse(_message.Message):
    __slots__ = ["expires_at", "id", "token", "tools", "workload"]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    TOKEN_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    expires_at: _timestamp_pb2.Timestamp
    id: str
    token: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    workload: str
    def __init__(self, token: _Optional[str] = ..., id: _Optional[str] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., workload: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ...) -> None: ...

class GoogleSearchOptions(_message.Message):
    __slots__ = ["country_code", "device", "language", "light_request", "nfpr", "page", "search_type"]
    COUNTRY_CODE_FIELD_NUMBER: _ClassVar[int]
    DEVICE_FIELD_NUMBER: _ClassVar[int]
    LANGUAGE_FIELD_NUMBER: _ClassVar[int]
    LIGHT_REQUEST_FIELD_NUMBER: _ClassVar[int]
    NFPR_FIELD_NUMBER: _ClassVar[int]
    PAGE_FIELD_NUMBER: _ClassVar[int]
    SEARCH_TYPE_FIELD_NUMBER: _ClassVar[int]
    country_code: str
    device: str
    language: str
    light_request: bool
    nfpr: bool
    page: int
    search_type: str
    def __init__(self, search_type: _Optional[str] = ..., country_code: _Optional[str] = ..., language: _Optional[str] = ..., page: _Optional[int] = ..., device: _Optional[str] = ..., nfpr: bool = ..., light_request: bool = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ["google", "no_cache", "num_results", "query", "tool"]
    GOOGLE_FIELD_NUMBER: _ClassVar[int]
    NO_CACHE_FIELD_NUMBER: _ClassVar[int]
    NUM_RESULTS_FIELD_NUMBER: _ClassVar[int]
    QUERY_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    google: GoogleSearchOptions
    no_cache: bool
    num_results: int
    query: str
    tool: str
    def __init__(self, tool: _Optional[str] = ..., query: _Optional[str] = ..., num_results: _Optional[int] = ..., google: _Optional[_Union[GoogleSearchOptions, _Mapping]] = ..., no_cache: bool = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ["cache_age", "cached", "credential", "credential_version", "credits", "metadata", "rate_limit_wait", "results", "tool"]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    CACHE_AGE_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_FIELD_NUMBER: _ClassVar[int]
    CREDENTIAL_VERSION_FIELD_NUMBER: _ClassVar[int]
    CREDITS_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    RATE_LIMIT_WAIT_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TOOL_FIELD_NUMBER: _ClassVar[int]
    cache_age: _duration_pb2.Duration
    cached: bool
    credential: str
    credential_version: int
    credits: int
    metadata: _struct_pb2.Struct
    rate_limit_wait: _duration_pb2.Duration
    results: _containers.RepeatedCompositeFieldContainer[SearchResult]
    tool: str
    def __init__(self, results: _Optional[_Iterable[_Union[SearchResult, _Mapping]]] = ..., tool: _Optional[str] = ..., credential: _Optional[str] = ..., credential_version: _Optional[int] = ..., metadata: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ..., cached: bool = ..., cache_age: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ..., credits: _Optional[int] = ..., rate_limit_wait: _Optional[_Union[_duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class SearchResult(_message.Message):
    __slots__ = ["position", "raw", "snippet", "title", "url"]
    POSITION_FIELD_NUMBER: _ClassVar[int]
    RAW_FIELD_NUMBER: _ClassVar[int]
    SNIPPET_FIELD_NUMBER: _ClassVar[int]
    TITLE_FIELD_NUMBER: _ClassVar[int]
    URL_FIELD_NUMBER: _ClassVar[int]
    position: int
    raw: _struct_pb2.Struct
    snippet: str
    title: str
    url: str
    def __init__(self, title: _Optional[str] = ..., url: _Optional[str] = ..., snippet: _Optional[str] = ..., position: _Optional[int] = ..., raw: _Optional[_Union[_struct_pb2.Struct, _Mapping]] = ...) -> None: ...

class WhoAmIRequest(_message.Message):
    __slots__ = []
    def __init__(self) -> None: ...

class WhoAmIResponse(_message.Message):
    __slots__ = ["bind_uid", "expires_at", "label", "max_uses", "token_id", "tools", "uses"]
    BIND_UID_FIELD_NUMBER: _ClassVar[int]
    EXPIRES_AT_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    MAX_USES_FIELD_NUMBER: _ClassVar[int]
    TOKEN_ID_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    USES_FIELD_NUMBER: _ClassVar[int]
    bind_uid: int
    expires_at: _timestamp_pb2.Timestamp
    label: str
    max_uses: int
    token_id: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    uses: int
    def __init__(self, token_id: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., expires_at: _Optional[_Union[_timestamp_pb2.Timestamp, _Mapping]] = ..., label: _Optional[str] = ..., max_uses: _Optional[int] = ..., uses: _Optional[int] = ..., bind_uid: _Optional[int] = ...) -> None: ...
