"""gRPC PipelineService on rpc_port: a thin adapter onto the data plane."""

from concurrent import futures

import grpc

from serving.dataplane import DataPlane, PipelineResponse
from serving.errors import InputError
from serving.proto import pipeline_service_pb2 as pb
from serving.proto import pipeline_service_pb2_grpc as pb_grpc
from serving.protocols.health import add_health
from serving.protocols.pipeline_codec import request_from_proto, response_to_proto


class PipelineServicer(pb_grpc.PipelineServiceServicer):
    """`inference(Request) returns (Response)`: decode, run, encode."""

    def __init__(self, dataplane: DataPlane) -> None:
        self.dataplane = dataplane

    def inference(self, request: pb.Request, context: grpc.ServicerContext) -> pb.Response:
        """Errors travel in err_no/err_msg, as Paddle Serving's clients expect, never as gRPC status."""
        try:
            decoded = request_from_proto(request, context.peer())
        except InputError as exc:
            return response_to_proto(PipelineResponse.from_error(exc))
        return response_to_proto(self.dataplane.infer(decoded, "grpc"))


def start_grpc_server(dataplane: DataPlane, port: int, workers: int, max_message_bytes: int) -> tuple[grpc.Server, int]:
    """Serve on `port` (0 = any free port); returns the server and the bound port."""
    options = [("grpc.max_receive_message_length", max_message_bytes),
               ("grpc.max_send_message_length", max_message_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers, thread_name_prefix="grpc"), options=options)
    pb_grpc.add_PipelineServiceServicer_to_server(PipelineServicer(dataplane), server)
    add_health(server, lambda: dataplane.ready, [pb.DESCRIPTOR.services_by_name["PipelineService"].full_name])
    bound = server.add_insecure_port(f"0.0.0.0:{port}")
    if bound == 0:
        raise OSError(f"cannot listen on rpc_port {port}")
    server.start()
    return server, bound
