"""A local gRPC server that speaks Cloud Monitoring's MetricService and
AlertPolicyService protocols, for tests.

There is no Cloud Monitoring emulator, so this server decodes the real
``google.monitoring.v3`` request protos. It enforces the service rules the
exporter must respect: descriptors exist before points, and kinds and value
types match them. A request contains at most 200 series with one point each.
The points of a series come in time order, at least ``min_interval_s``
apart. A request that breaks a rule fails with INVALID_ARGUMENT and is
listed in ``violations``.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.api import metric_pb2
from google.cloud import monitoring_v3
from google.cloud.monitoring_v3.services.alert_policy_service.transports import (
    AlertPolicyServiceGrpcTransport,
)
from google.cloud.monitoring_v3.services.metric_service.transports import (
    MetricServiceGrpcTransport,
)
from google.protobuf import empty_pb2


@dataclass
class ReceivedPoint:
    metric_type: str
    metric_labels: dict[str, str]
    resource_type: str
    resource_labels: dict[str, str]
    metric_kind: str
    value_type: str
    start_s: float | None
    end_s: float
    value: Any


@dataclass
class FakeMonitoringServer:
    """The server's state.

    ``lock`` guards what the handlers record and store. The test sets the
    failure switches (``fail_with``, ``hold_requests``) directly.
    """

    min_interval_s: float = 5.0
    # Set to a status code to fail every request with it.
    fail_with: grpc.StatusCode | None = None
    # Set to a status code to fail only CreateMetricDescriptor with it.
    fail_descriptors_with: grpc.StatusCode | None = None
    # When set, CreateTimeSeries waits for ``release`` before it returns.
    hold_requests: bool = False
    release: threading.Event = field(default_factory=threading.Event)
    request_arrived: threading.Event = field(default_factory=threading.Event)
    descriptors: dict[str, metric_pb2.MetricDescriptor] = field(default_factory=dict)
    descriptor_requests: int = 0
    time_series_requests: list[int] = field(default_factory=list)
    points: list[ReceivedPoint] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    failed_requests: int = 0
    alert_policies: dict[str, monitoring_v3.AlertPolicy] = field(default_factory=dict)
    alert_calls: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)
    _server: grpc.Server | None = None
    address: str = ""

    def start(self) -> str:
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=4, thread_name_prefix="fake-monitoring"
            )
        )
        server.add_generic_rpc_handlers(
            (self._metric_service_handler(), self._alert_policy_handler())
        )
        port = server.add_insecure_port("127.0.0.1:0")
        server.start()
        self._server = server
        self.address = f"127.0.0.1:{port}"
        return self.address

    def stop(self) -> None:
        self.release.set()
        if self._server is not None:
            self._server.stop(grace=None)

    def metric_client(self) -> monitoring_v3.MetricServiceClient:
        channel = grpc.insecure_channel(self.address)
        transport = MetricServiceGrpcTransport(channel=channel)
        return monitoring_v3.MetricServiceClient(transport=transport)

    def alert_client(self) -> monitoring_v3.AlertPolicyServiceClient:
        channel = grpc.insecure_channel(self.address)
        transport = AlertPolicyServiceGrpcTransport(channel=channel)
        return monitoring_v3.AlertPolicyServiceClient(transport=transport)

    def series_points(self, metric_type: str, **labels: str) -> list[ReceivedPoint]:
        """Return the points received for one metric whose labels include
        ``labels``, in arrival order."""
        with self.lock:
            return [
                point
                for point in self.points
                if point.metric_type == metric_type
                and all(point.metric_labels.get(k) == v for k, v in labels.items())
            ]

    # --- MetricService -----------------------------------------------------

    def _metric_service_handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            "CreateMetricDescriptor": _unary(
                self._create_metric_descriptor,
                monitoring_v3.CreateMetricDescriptorRequest.deserialize,
            ),
            "CreateTimeSeries": _unary(
                self._create_time_series,
                monitoring_v3.CreateTimeSeriesRequest.deserialize,
            ),
        }
        return grpc.method_handlers_generic_handler(
            "google.monitoring.v3.MetricService", handlers
        )

    def _create_metric_descriptor(
        self, request: monitoring_v3.CreateMetricDescriptorRequest, context: Any
    ) -> bytes:
        self._maybe_fail(context)
        if self.fail_descriptors_with is not None:
            context.abort(self.fail_descriptors_with, "fake descriptor failure")
        descriptor = metric_pb2.MetricDescriptor()
        descriptor.CopyFrom(request.metric_descriptor)
        with self.lock:
            self.descriptor_requests += 1
            self.descriptors[descriptor.type] = descriptor
        return descriptor.SerializeToString()

    def _create_time_series(
        self, request: monitoring_v3.CreateTimeSeriesRequest, context: Any
    ) -> bytes:
        self.request_arrived.set()
        if self.hold_requests:
            self.release.wait()
        self._maybe_fail(context)
        with self.lock:
            problem = self._check_request(request)
            if problem is not None:
                self.violations.append(problem)
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, problem)
            self.time_series_requests.append(len(request.time_series))
            for series in request.time_series:
                self.points.append(_received_point(series))
        return empty_pb2.Empty().SerializeToString()

    def _check_request(
        self, request: monitoring_v3.CreateTimeSeriesRequest
    ) -> str | None:
        if len(request.time_series) > 200:
            return f"{len(request.time_series)} time series in one request, max 200"
        for series in request.time_series:
            problem = self._check_series(series)
            if problem is not None:
                return problem
        return None

    def _check_series(self, series: monitoring_v3.TimeSeries) -> str | None:
        metric_type = series.metric.type
        descriptor = self.descriptors.get(metric_type)
        if descriptor is None:
            return f"no descriptor for {metric_type}"
        if series.metric_kind != descriptor.metric_kind:
            return f"{metric_type}: kind {series.metric_kind} != descriptor"
        if series.value_type != descriptor.value_type:
            return f"{metric_type}: value type {series.value_type} != descriptor"
        expected_keys = sorted(label.key for label in descriptor.labels)
        if sorted(series.metric.labels) != expected_keys:
            return f"{metric_type}: labels {sorted(series.metric.labels)}"
        if len(series.points) != 1:
            return f"{metric_type}: {len(series.points)} points in one series"
        point = _received_point(series)
        if point.metric_kind == "CUMULATIVE" and (
            point.start_s is None or point.start_s >= point.end_s
        ):
            return (
                f"{metric_type}: cumulative start {point.start_s} >= end {point.end_s}"
            )
        earlier = [
            earlier_point
            for earlier_point in self.points
            if earlier_point.metric_type == metric_type
            and earlier_point.metric_labels == point.metric_labels
            and earlier_point.resource_labels == point.resource_labels
        ]
        if earlier:
            last_end_s = earlier[-1].end_s
            if point.end_s <= last_end_s:
                return f"{metric_type}: point at {point.end_s} not after {last_end_s}"
            # 1 µs of slack: float seconds near 1.8e9 resolve to about 0.24 µs,
            # so two times exactly min_interval_s apart can round below it.
            if point.end_s - last_end_s < self.min_interval_s - 1e-6:
                return (
                    f"{metric_type}: points {point.end_s - last_end_s:.3f} s apart, "
                    f"min {self.min_interval_s} s"
                )
        return None

    # --- AlertPolicyService ---------------------------------------------------

    def _alert_policy_handler(self) -> grpc.GenericRpcHandler:
        handlers = {
            "ListAlertPolicies": _unary(
                self._list_alert_policies,
                monitoring_v3.ListAlertPoliciesRequest.deserialize,
            ),
            "CreateAlertPolicy": _unary(
                self._create_alert_policy,
                monitoring_v3.CreateAlertPolicyRequest.deserialize,
            ),
            "UpdateAlertPolicy": _unary(
                self._update_alert_policy,
                monitoring_v3.UpdateAlertPolicyRequest.deserialize,
            ),
        }
        return grpc.method_handlers_generic_handler(
            "google.monitoring.v3.AlertPolicyService", handlers
        )

    def _list_alert_policies(
        self, request: monitoring_v3.ListAlertPoliciesRequest, context: Any
    ) -> bytes:
        self._maybe_fail(context)
        with self.lock:
            self.alert_calls.append("list")
            policies = [
                policy
                for name, policy in sorted(self.alert_policies.items())
                if name.startswith(request.name + "/")
            ]
        response = monitoring_v3.ListAlertPoliciesResponse(alert_policies=policies)
        return monitoring_v3.ListAlertPoliciesResponse.serialize(response)

    def _create_alert_policy(
        self, request: monitoring_v3.CreateAlertPolicyRequest, context: Any
    ) -> bytes:
        self._maybe_fail(context)
        policy = request.alert_policy
        if policy.name:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "name must be empty")
        if not policy.conditions:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "no conditions")
        with self.lock:
            self.alert_calls.append("create")
            policy.name = f"{request.name}/alertPolicies/{len(self.alert_policies) + 1}"
            self.alert_policies[policy.name] = policy
        return monitoring_v3.AlertPolicy.serialize(policy)

    def _update_alert_policy(
        self, request: monitoring_v3.UpdateAlertPolicyRequest, context: Any
    ) -> bytes:
        self._maybe_fail(context)
        policy = request.alert_policy
        with self.lock:
            self.alert_calls.append("update")
            if policy.name not in self.alert_policies:
                context.abort(grpc.StatusCode.NOT_FOUND, f"{policy.name} not found")
            self.alert_policies[policy.name] = policy
        return monitoring_v3.AlertPolicy.serialize(policy)

    def _maybe_fail(self, context: Any) -> None:
        code = self.fail_with
        if code is not None:
            with self.lock:
                self.failed_requests += 1
            context.abort(code, f"fake failure {code.name}")


def _unary(
    function: Callable[[Any, Any], bytes], deserializer: Callable[[bytes], Any]
) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        function,
        request_deserializer=deserializer,
        response_serializer=lambda response: response,
    )


def _received_point(series: monitoring_v3.TimeSeries) -> ReceivedPoint:
    point = series.points[0]
    interval = point.interval
    start_s = None
    if "start_time" in interval:
        start_s = interval.start_time.timestamp()
    typed = point.value
    which = monitoring_v3.TypedValue.pb(typed).WhichOneof("value")
    value: Any = getattr(typed, which)
    return ReceivedPoint(
        metric_type=series.metric.type,
        metric_labels=dict(series.metric.labels),
        resource_type=series.resource.type,
        resource_labels=dict(series.resource.labels),
        metric_kind=metric_pb2.MetricDescriptor.MetricKind.Name(series.metric_kind),
        value_type=metric_pb2.MetricDescriptor.ValueType.Name(series.value_type),
        start_s=start_s,
        end_s=interval.end_time.timestamp(),
        value=value,
    )
