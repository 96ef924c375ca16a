"""The secured five-host cluster of tests/netns_cluster.py, launch and attach mode: the
coordinator on h1 (TLS for the host name h1), two Engram memory nodes on h2 and h3 (token),
an engine of 2 attention ranks on h4 and 2 expert ranks on h5 over TCP. In launch mode the
coordinator starts it with mpirun through the namespace rsh agent (--advertise h1:PORT); in
attach mode an operator's mpirun on h1 does, from a hostfile, or Slurm does (slurmctld on
h1, slurmd on h4 and h5, `srun --mpi=pmix` as the README shows). A client outside the hosts
dials h1 by name; greedy streamed tokens must equal `dsv4 run` in one process on one host.

Usage (inside `scripts/netns-cluster.sh run`, hosts h1..h5 up):
  netns_serving_test.py BIN_DIR SOURCE_DIR PYTHON_STUB_DIR
"""
import os
import shutil
import sys
import tempfile
import unittest

BIN_DIR, SOURCE_DIR, STUB_DIR = (os.path.abspath(p) for p in sys.argv[1:4])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns_cluster  # noqa: E402

netns_cluster.require_hosts(5)

import grpc  # noqa: E402

sys.path.insert(0, STUB_DIR)
from proto import inference_pb2, inference_pb2_grpc  # noqa: E402

PROMPT = "Hello there"
TOKENS = 12


def generate(stub, tokens):
    request = inference_pb2.GenerateRequest(text=PROMPT, max_tokens=tokens, ignore_eos=True)
    request.sampling.temperature = 0
    streamed = []
    for response in stub.Generate(request, timeout=120):
        streamed.extend(response.token_ids)
    return streamed


class ClusterTest(unittest.TestCase):
    ENGINES = "launch"

    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="dsv4-netns-")
        cls.cluster = netns_cluster.Cluster(BIN_DIR, SOURCE_DIR, cls.tmp,
                                            engines="launch" if cls.ENGINES == "launch"
                                            else "attach")
        cls.channel = None
        try:
            cls.cluster.start()
            if cls.ENGINES == "attach":
                cls.cluster.attach_engine()
            elif cls.ENGINES == "slurm":
                cls.cluster.start_slurm()
                cls.cluster.srun_engine()
            cls.cluster.coordinator.wait_for("engine engine-0 connected", 120)
            cls.channel = cls.cluster.channel()
            cls.stub = inference_pb2_grpc.InferenceStub(cls.channel)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        if cls.channel is not None:
            cls.channel.close()
        cls.cluster.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_ranks_run_on_their_hosts(self):
        status = self.stub.GetClusterStatus(inference_pb2.ClusterStatusRequest(), timeout=10)
        self.assertEqual(len(status.engines), 1, status)
        hosts = [(r.role, r.host) for r in status.engines[0].ranks]
        self.assertEqual(hosts, [("attention", "h4"), ("attention", "h4"), ("expert", "h5"),
                                 ("expert", "h5")])

    def test_streamed_tokens_equal_one_process(self):
        expected = netns_cluster.greedy_reference(BIN_DIR, self.cluster.checkpoint, PROMPT,
                                                  TOKENS)
        self.assertEqual(generate(self.stub, TOKENS), expected)


class LaunchModeTest(ClusterTest):
    ENGINES = "launch"

    def test_a_certificate_for_another_name_is_refused(self):
        with open(os.path.join(self.tmp, "coord.pem"), "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        # The same server by its address: the certificate names h1 only.
        with grpc.secure_channel("10.77.0.11:50051", credentials) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            with self.assertRaises(grpc.RpcError) as error:
                stub.GetClusterStatus(inference_pb2.ClusterStatusRequest(), timeout=10)
            self.assertEqual(error.exception.code(), grpc.StatusCode.UNAVAILABLE)


class AttachModeTest(ClusterTest):
    ENGINES = "attach"


@unittest.skipUnless(shutil.which("slurmctld") and shutil.which("srun"),
                     "Slurm (slurmctld, slurmd, srun) is not installed")
class SlurmAttachTest(ClusterTest):
    ENGINES = "slurm"


del ClusterTest  # only its two modes run

if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
