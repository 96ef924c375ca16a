"""The public API from Python: Debian's grpcio (/usr/bin/python3) against a real
dsv4-coordinator process. Message classes come from `protoc --python_out` at build time
(python3-grpc-tools is not packaged here, so calls use grpc's generic multi-callables with
the generated messages instead of generated service stubs).

Usage: coordinator_client_test.py BIN_DIR SOURCE_DIR PYTHON_PROTO_DIR
"""
import os
import re
import signal
import subprocess
import sys
import unittest

import grpc

BIN_DIR, SOURCE_DIR, PROTO_DIR = sys.argv[1:4]
sys.path.insert(0, PROTO_DIR)
from proto import inference_pb2  # noqa: E402  (generated into PROTO_DIR/proto)


class CoordinatorClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.process = subprocess.Popen(
            [os.path.join(BIN_DIR, "dsv4-coordinator"),
             "--cluster", "cluster-configs/local.yaml",
             "--checkpoint", "models/v4-mini", "--listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0"],
            cwd=SOURCE_DIR, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
        address = None
        for line in cls.process.stdout:  # ends if the process dies
            match = re.search(r"listening on (\S+)", line)
            if match:
                address = match.group(1)
                break
        if address is None:
            cls.process.kill()
            raise RuntimeError("dsv4-coordinator did not start")
        cls.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(cls.channel).result(timeout=10)

    @classmethod
    def tearDownClass(cls):
        cls.channel.close()
        cls.process.send_signal(signal.SIGTERM)
        assert cls.process.wait(timeout=10) == 0

    def call(self, method, request, response_class):
        return self.channel.unary_unary(
            "/dsv4.v1.Inference/" + method,
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=response_class.FromString)(request, timeout=10)

    def test_tokenize(self):
        response = self.call("Tokenize", inference_pb2.TokenizeRequest(text="Hello, world"),
                             inference_pb2.TokenizeResponse)
        self.assertGreater(len(response.token_ids), 1)

    def test_list_models(self):
        response = self.call("ListModels", inference_pb2.ListModelsRequest(),
                             inference_pb2.ListModelsResponse)
        self.assertEqual([m.name for m in response.models], ["v4-mini"])
        self.assertGreater(response.models[0].parameters, response.models[0].active_parameters)

    def test_cluster_status_without_engines(self):
        status = self.call("GetClusterStatus", inference_pb2.ClusterStatusRequest(),
                           inference_pb2.ClusterStatus)
        self.assertEqual(len(status.engines), 0)

    def test_generate(self):
        generate = self.channel.unary_stream(
            "/dsv4.v1.Inference/Generate",
            request_serializer=lambda m: m.SerializeToString(),
            response_deserializer=inference_pb2.GenerateResponse.FromString)
        with self.assertRaises(grpc.RpcError) as bad:
            list(generate(inference_pb2.GenerateRequest(text="hi", max_tokens=0), timeout=10))
        self.assertEqual(bad.exception.code(), grpc.StatusCode.INVALID_ARGUMENT)
        self.assertIn("max_tokens must be in [1, ", bad.exception.details())
        with self.assertRaises(grpc.RpcError) as none:
            list(generate(inference_pb2.GenerateRequest(text="hi", max_tokens=8), timeout=10))
        self.assertEqual(none.exception.code(), grpc.StatusCode.UNAVAILABLE)
        self.assertIn("no engine connected", none.exception.details())

    def test_health(self):
        check = self.channel.unary_unary("/grpc.health.v1.Health/Check")
        self.assertEqual(check(b"", timeout=10), b"\x08\x01")  # status: SERVING


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
