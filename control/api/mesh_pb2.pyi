from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Workload(_message.Message):
    __slots__ = ("namespace", "name", "node", "ip", "node_ip", "service_account", "identity", "labels", "enrolled", "ready", "waypoint", "exclude_outbound_ports", "exclude_inbound_ports")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    NODE_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    NODE_IP_FIELD_NUMBER: _ClassVar[int]
    SERVICE_ACCOUNT_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    ENROLLED_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    WAYPOINT_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_OUTBOUND_PORTS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDE_INBOUND_PORTS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    node: str
    ip: str
    node_ip: str
    service_account: str
    identity: str
    labels: _containers.ScalarMap[str, str]
    enrolled: bool
    ready: bool
    waypoint: str
    exclude_outbound_ports: _containers.RepeatedScalarFieldContainer[int]
    exclude_inbound_ports: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., node: _Optional[str] = ..., ip: _Optional[str] = ..., node_ip: _Optional[str] = ..., service_account: _Optional[str] = ..., identity: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ..., enrolled: _Optional[bool] = ..., ready: _Optional[bool] = ..., waypoint: _Optional[str] = ..., exclude_outbound_ports: _Optional[_Iterable[int]] = ..., exclude_inbound_ports: _Optional[_Iterable[int]] = ...) -> None: ...

class ServicePort(_message.Message):
    __slots__ = ("port", "target_port_number", "target_port_name", "name", "app_protocol")
    PORT_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_NUMBER_FIELD_NUMBER: _ClassVar[int]
    TARGET_PORT_NAME_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    APP_PROTOCOL_FIELD_NUMBER: _ClassVar[int]
    port: int
    target_port_number: int
    target_port_name: str
    name: str
    app_protocol: str
    def __init__(self, port: _Optional[int] = ..., target_port_number: _Optional[int] = ..., target_port_name: _Optional[str] = ..., name: _Optional[str] = ..., app_protocol: _Optional[str] = ...) -> None: ...

class Endpoint(_message.Message):
    __slots__ = ("workload", "ip", "ports")
    class PortsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: int
        value: int
        def __init__(self, key: _Optional[int] = ..., value: _Optional[int] = ...) -> None: ...
    WORKLOAD_FIELD_NUMBER: _ClassVar[int]
    IP_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    workload: str
    ip: str
    ports: _containers.ScalarMap[int, int]
    def __init__(self, workload: _Optional[str] = ..., ip: _Optional[str] = ..., ports: _Optional[_Mapping[int, int]] = ...) -> None: ...

class Service(_message.Message):
    __slots__ = ("namespace", "name", "vip", "ports", "endpoints", "waypoint", "labels")
    class LabelsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    VIP_FIELD_NUMBER: _ClassVar[int]
    PORTS_FIELD_NUMBER: _ClassVar[int]
    ENDPOINTS_FIELD_NUMBER: _ClassVar[int]
    WAYPOINT_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    vip: str
    ports: _containers.RepeatedCompositeFieldContainer[ServicePort]
    endpoints: _containers.RepeatedCompositeFieldContainer[Endpoint]
    waypoint: str
    labels: _containers.ScalarMap[str, str]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., vip: _Optional[str] = ..., ports: _Optional[_Iterable[_Union[ServicePort, _Mapping]]] = ..., endpoints: _Optional[_Iterable[_Union[Endpoint, _Mapping]]] = ..., waypoint: _Optional[str] = ..., labels: _Optional[_Mapping[str, str]] = ...) -> None: ...

class Waypoint(_message.Message):
    __slots__ = ("namespace", "name", "identity", "addresses")
    NAMESPACE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    IDENTITY_FIELD_NUMBER: _ClassVar[int]
    ADDRESSES_FIELD_NUMBER: _ClassVar[int]
    namespace: str
    name: str
    identity: str
    addresses: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, namespace: _Optional[str] = ..., name: _Optional[str] = ..., identity: _Optional[str] = ..., addresses: _Optional[_Iterable[str]] = ...) -> None: ...

class Mesh(_message.Message):
    __slots__ = ("trust_domain",)
    TRUST_DOMAIN_FIELD_NUMBER: _ClassVar[int]
    trust_domain: str
    def __init__(self, trust_domain: _Optional[str] = ...) -> None: ...

class PeerAuthentication(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class AuthorizationPolicy(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class VirtualService(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class DestinationRule(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class RateLimitPolicy(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class RejectedResources(_message.Message):
    __slots__ = ("resources",)
    class Rejected(_message.Message):
        __slots__ = ("name", "version", "reason")
        NAME_FIELD_NUMBER: _ClassVar[int]
        VERSION_FIELD_NUMBER: _ClassVar[int]
        REASON_FIELD_NUMBER: _ClassVar[int]
        name: str
        version: str
        reason: str
        def __init__(self, name: _Optional[str] = ..., version: _Optional[str] = ..., reason: _Optional[str] = ...) -> None: ...
    RESOURCES_FIELD_NUMBER: _ClassVar[int]
    resources: _containers.RepeatedCompositeFieldContainer[RejectedResources.Rejected]
    def __init__(self, resources: _Optional[_Iterable[_Union[RejectedResources.Rejected, _Mapping]]] = ...) -> None: ...
