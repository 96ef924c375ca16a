"""A secured cluster over five hosts of scripts/netns-cluster.sh, as the README's "Deploying
on several hosts" describes it: the coordinator on h1 (TLS with a certificate for the host
name h1), two Engram memory nodes on h2 and h3 (token), and an engine of 2 attention
ranks on h4 and 2 expert ranks on h5 that the coordinator launches with mpirun through
the namespace rsh agent (TCP only, --advertise h1:PORT). A client outside the hosts
dials h1 by name; the streamed tokens of a greedy request must equal `dsv4 run` on one
host, in one process, with the tables loaded locally.

Usage (inside `scripts/netns-cluster.sh run`, hosts h1..h5 up):
  netns_serving_test.py BIN_DIR SOURCE_DIR PYTHON_STUB_DIR
Exits 77 (skipped) when the namespace cluster is not up.
"""
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

BIN_DIR, SOURCE_DIR, STUB_DIR = (os.path.abspath(p) for p in sys.argv[1:4])
STATE = os.environ.get("DSV4_NETNS_STATE", "/run/dsv4-netns")
if not os.path.exists(os.path.join(STATE, "h5.uts")):
    print("skipped: the namespace cluster (h1..h5) is not up")
    sys.exit(77)

import grpc  # noqa: E402

sys.path.insert(0, STUB_DIR)
from proto import inference_pb2, inference_pb2_grpc  # noqa: E402

RSH = os.path.join(SOURCE_DIR, "scripts", "netns-rsh")
MPIRUN_ARGS = ("--oversubscribe --mca plm_rsh_agent " + RSH + " --mca btl tcp,self "
               "--mca btl_tcp_if_include 10.77.0.0/24 --mca oob_tcp_if_include 10.77.0.0/24")
PROMPT = "Hello there"
TOKENS = 12


class Process:
    """A command on a namespace host; its output is drained and kept for failures."""

    def __init__(self, host, args, log):
        self.lines = []
        self.log = log
        self.popen = subprocess.Popen([RSH, host, " ".join(args)], stdout=subprocess.PIPE,
                                      stderr=subprocess.STDOUT, text=True,
                                      start_new_session=True)
        threading.Thread(target=self._drain, daemon=True).start()

    def _drain(self):
        for line in self.popen.stdout:
            self.lines.append(line)

    def wait_for(self, pattern, timeout):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if any(re.search(pattern, line) for line in self.lines):
                return
            if self.popen.poll() is not None:
                break
            time.sleep(0.1)
        raise RuntimeError(f"{self.log}: no '{pattern}' in:\n" + "".join(self.lines[-40:]))

    def stop(self):
        if self.popen.poll() is None:
            os.killpg(self.popen.pid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=15)
            except subprocess.TimeoutExpired:
                os.killpg(self.popen.pid, signal.SIGKILL)


def write(path, text, mode=0o600):
    with open(path, "w") as f:
        f.write(text)
    os.chmod(path, mode)


class NetnsServingTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="dsv4-netns-")
        cls.processes = []
        try:
            cls._start()
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def _start(cls):
        t = cls.tmp
        cls.checkpoint = os.path.join(t, "v41-tiny")
        subprocess.run([os.path.join(BIN_DIR, "dsv4"), "checkpoint", "generate", "--preset",
                        "v41-tiny", "--seed", "7", "--out", cls.checkpoint], check=True,
                       timeout=120, stdout=subprocess.DEVNULL)
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
                        "-subj", "/CN=h1", "-addext", "subjectAltName=DNS:h1",
                        "-keyout", os.path.join(t, "coord.key"),
                        "-out", os.path.join(t, "coord.pem")],
                       check=True, timeout=60, capture_output=True)
        for name in ("engram.token", "engine.token", "admin.token"):
            write(os.path.join(t, name), os.urandom(16).hex() + "\n")
        links = "".join(
            f"    {c}: {{bandwidth_GBps: 10, latency_us: 50, source: \"netns bridge\"}}\n"
            for c in ("intra_node", "intra_supernode", "inter_supernode"))
        cls.cluster = os.path.join(t, "cluster.yaml")
        write(cls.cluster, f"""name: netns
hardware: {SOURCE_DIR}/cluster-configs/hardware/ascend-950dt.yaml
topology:
  supernodes: 1
  nodes_per_supernode: 2
  chips_per_node: 2
  hosts: [h4, h5]
  links:
{links}roles:
  attention_ranks: 2
  expert_ranks: 2
engine:
  max_seqs_per_rank: 8
  max_seq_len: 1024
  kv_budget_tokens: 8192
  chunked_prefill_tokens: 256
engram:
  servers: ["h2:50061", "h3:50061"]
  replication: 2
  token_file: {t}/engram.token
coordinator:
  listen: "0.0.0.0:50051"
  engine_listen: "0.0.0.0:50053"
  admin_listen: "127.0.0.1:50052"
  tls: {{cert: {t}/coord.pem, key: {t}/coord.key}}
  engine_token_file: {t}/engine.token
  admin_token_file: {t}/admin.token
""", mode=0o644)
        for index, host in enumerate(("h2", "h3")):
            node = Process(host, [os.path.join(BIN_DIR, "dsv4-engram-store"), "--checkpoint",
                                  cls.checkpoint, "--cluster", cls.cluster, "--index",
                                  str(index)], f"memory node {host}")
            cls.processes.append(node)
        for node in cls.processes:
            node.wait_for("listening on", 60)
        cls.coordinator = Process(
            "h1", [os.path.join(BIN_DIR, "dsv4-coordinator"), "--cluster", cls.cluster,
                   "--checkpoint", cls.checkpoint, "--advertise", "h1:50053",
                   f"--mpirun-args='{MPIRUN_ARGS}'"], "coordinator on h1")
        cls.processes.insert(0, cls.coordinator)  # stopped first: it stops the engine
        cls.coordinator.wait_for("engine engine-0 connected", 120)
        with open(os.path.join(t, "coord.pem"), "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        cls.channel = grpc.secure_channel("h1:50051", credentials)
        grpc.channel_ready_future(cls.channel).result(timeout=30)
        cls.stub = inference_pb2_grpc.InferenceStub(cls.channel)

    @classmethod
    def tearDownClass(cls):
        if getattr(cls, "channel", None) is not None:
            cls.channel.close()
        for process in cls.processes:
            process.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)

    def test_ranks_run_on_their_hosts(self):
        status = self.stub.GetClusterStatus(inference_pb2.ClusterStatusRequest(), timeout=10)
        self.assertEqual(len(status.engines), 1, status)
        hosts = [(r.role, r.host) for r in status.engines[0].ranks]
        self.assertEqual(hosts, [("attention", "h4"), ("attention", "h4"), ("expert", "h5"),
                                 ("expert", "h5")])

    def test_streamed_tokens_equal_one_process(self):
        run = subprocess.run([os.path.join(BIN_DIR, "dsv4"), "run", "--checkpoint",
                              self.checkpoint, "--prompt", PROMPT, "--generate", str(TOKENS),
                              "--temperature", "0"], check=True, timeout=120,
                             capture_output=True, text=True)
        expected = [int(x) for x in re.search(r"generated: ([\d,]+)", run.stdout)
                    .group(1).split(",")]
        request = inference_pb2.GenerateRequest(text=PROMPT, max_tokens=TOKENS, ignore_eos=True)
        request.sampling.temperature = 0
        streamed = []
        for response in self.stub.Generate(request, timeout=120):
            streamed.extend(response.token_ids)
        self.assertEqual(streamed, expected)

    def test_a_certificate_for_another_name_is_refused(self):
        with open(os.path.join(self.tmp, "coord.pem"), "rb") as f:
            credentials = grpc.ssl_channel_credentials(root_certificates=f.read())
        # The same server by its address: the certificate names h1 only.
        with grpc.secure_channel("10.77.0.11:50051", credentials) as channel:
            stub = inference_pb2_grpc.InferenceStub(channel)
            with self.assertRaises(grpc.RpcError) as error:
                stub.GetClusterStatus(inference_pb2.ClusterStatusRequest(), timeout=10)
            self.assertEqual(error.exception.code(), grpc.StatusCode.UNAVAILABLE)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
