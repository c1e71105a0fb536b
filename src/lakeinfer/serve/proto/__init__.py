"""The KServe v2 gRPC messages, built from ``grpc_predict_v2.proto``'s descriptor.

They live in a descriptor pool of their own: ``inference.ModelInferRequest`` and its fellows are
also defined by tritonclient's and KServe's generated modules, and the default pool takes each
name once, so a process may import those clients beside this server.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor_pool, message_factory

from .descriptor import SERIALIZED

PACKAGE = "inference"
SERVICE = f"{PACKAGE}.GRPCInferenceService"

POOL = descriptor_pool.DescriptorPool()
POOL.AddSerializedFile(SERIALIZED)


def _message(name: str) -> Any:
    return message_factory.GetMessageClass(POOL.FindMessageTypeByName(f"{PACKAGE}.{name}"))


ServerLiveRequest = _message("ServerLiveRequest")
ServerLiveResponse = _message("ServerLiveResponse")
ServerReadyRequest = _message("ServerReadyRequest")
ServerReadyResponse = _message("ServerReadyResponse")
ModelReadyRequest = _message("ModelReadyRequest")
ModelReadyResponse = _message("ModelReadyResponse")
ServerMetadataRequest = _message("ServerMetadataRequest")
ServerMetadataResponse = _message("ServerMetadataResponse")
ModelMetadataRequest = _message("ModelMetadataRequest")
ModelMetadataResponse = _message("ModelMetadataResponse")
ModelInferRequest = _message("ModelInferRequest")
ModelInferResponse = _message("ModelInferResponse")
InferParameter = _message("InferParameter")
InferTensorContents = _message("InferTensorContents")

# (method, request class, response class), as the service declares them
METHODS: dict[str, tuple[Any, Any]] = {
    method.name: (_message(method.input_type.name), _message(method.output_type.name))
    for method in POOL.FindServiceByName(SERVICE).methods
}
