import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class WatchBundleRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TrustBundle(_message.Message):
    __slots__ = ("trust_domain", "sequence", "root_certificates", "signing_key_id", "reissue_window", "revoked_key_ids")
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    ROOT_CERTIFICATES_FIELD_NUMBER: _ClassVar[int]
    SIGNING_KEY_ID_FIELD_NUMBER: _ClassVar[int]
    REISSUE_WINDOW_FIELD_NUMBER: _ClassVar[int]
    REVOKED_KEY_IDS_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    sequence: int
    root_certificates: _containers.RepeatedScalarFieldContainer[str]
    signing_key_id: str
    reissue_window: _duration_pb2.Duration
    revoked_key_ids: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, trust_domain: _Optional[str] = ..., sequence: _Optional[int] = ..., root_certificates: _Optional[_Iterable[str]] = ..., signing_key_id: _Optional[str] = ..., reissue_window: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., revoked_key_ids: _Optional[_Iterable[str]] = ...) -> None: ...
