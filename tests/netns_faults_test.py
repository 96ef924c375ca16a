"""Faults only several hosts have, on the secured five-host cluster of tests/netns_cluster.py
(launch mode, heartbeats every 500 ms, so an engine is declared dead after 1.5 s):

1. A memory node becomes unreachable (its link goes down, the process lives): lookups fail
   over to the replica within the lookup deadline, tokens stay exact; once the link is back
   the node serves rows again.
2. The link of the engine's leader host (h4) goes down for 4 s while a request streams:
   heartbeats are missed, the engine is torn down and relaunched (the link comes back
   mid-restart), the request is replayed, and its tokens equal an undisturbed run: nothing
   lost or repeated.
3. A whole host disappears (every process of h5, the expert ranks' host, is killed): the
   coordinator restarts the engine where the layout allows (h5 is still there) and the
   request completes exactly.
4. The path between the two engine hosts (h4, h5) is cut mid-step while both still reach
   the coordinator: no rank hangs for ever (the YAML's engine.max_step_seconds, 5 here,
   bounds a stuck step); the engine is torn down and relaunched once the path is back, and
   the request completes exactly.

Recovery times (detection, engine back, first token after the fault) are printed, and
written as JSON to $DSV4_RECOVERY_JSON when set (bench/netns_recovery.sh).

Usage (inside `scripts/netns-cluster.sh run`, hosts h1..h5 up):
  netns_faults_test.py BIN_DIR SOURCE_DIR PYTHON_STUB_DIR
"""
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
import unittest

BIN_DIR, SOURCE_DIR, STUB_DIR = (os.path.abspath(p) for p in sys.argv[1:4])
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import netns_cluster  # noqa: E402

netns_cluster.require_hosts(5)

import grpc  # noqa: E402

sys.path.insert(0, STUB_DIR)
from proto import engram_pb2, engram_pb2_grpc, inference_pb2, inference_pb2_grpc  # noqa: E402

PROMPT = "Hello there"
LONG = 160  # tokens of the request that streams through a fault
RECOVERY = {}


def host_pids(host):
    """Pids of the processes in `host`'s network namespace."""
    target = os.stat(f"/run/netns/{host}").st_ino
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry}/ns/net").st_ino == target:
                pids.append(int(entry))
        except OSError:
            pass
    return pids


class Stream:
    """A greedy request streaming in the background; token arrival times are kept."""

    def __init__(self, stub, tokens):
        self.tokens, self.times, self.error = [], [], None
        request = inference_pb2.GenerateRequest(text=PROMPT, max_tokens=tokens, ignore_eos=True)
        request.sampling.temperature = 0
        self.thread = threading.Thread(target=self._run, args=(stub, request), daemon=True)
        self.thread.start()

    def _run(self, stub, request):
        try:
            for response in stub.Generate(request, timeout=240):
                for token in response.token_ids:
                    self.tokens.append(token)
                    self.times.append(time.monotonic())
        except grpc.RpcError as e:
            self.error = e

    def wait_for_tokens(self, n, timeout=60):
        deadline = time.monotonic() + timeout
        while len(self.tokens) < n and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        if len(self.tokens) < n:
            raise AssertionError(f"{len(self.tokens)} tokens, error {self.error}")

    def first_token_after(self, t):
        return next((s for s in self.times if s > t), None)


class FaultsTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="dsv4-netns-faults-")
        cls.cluster = netns_cluster.Cluster(BIN_DIR, SOURCE_DIR, cls.tmp, heartbeat_ms=500,
                                            max_step_seconds=5)
        cls.channel = None
        try:
            cls.cluster.start()
            cls.cluster.coordinator.wait_for("engine engine-0 connected", 120)
            cls.channel = cls.cluster.channel()
            cls.stub = inference_pb2_grpc.InferenceStub(cls.channel)
            cls.expected = netns_cluster.greedy_reference(BIN_DIR, cls.cluster.checkpoint,
                                                          PROMPT, LONG)
        except BaseException:
            cls.tearDownClass()
            raise

    @classmethod
    def tearDownClass(cls):
        for host in ("h2", "h4"):
            netns_cluster.link(host, up=True)
        if cls.channel is not None:
            cls.channel.close()
        cls.cluster.stop()
        shutil.rmtree(cls.tmp, ignore_errors=True)
        if RECOVERY:
            print("recovery:", json.dumps(RECOVERY, indent=2))
            if os.environ.get("DSV4_RECOVERY_JSON"):
                with open(os.environ["DSV4_RECOVERY_JSON"], "w") as f:
                    json.dump(RECOVERY, f, indent=2)

    def rows_served(self, host):
        with open(os.path.join(self.tmp, "engram.token")) as f:
            token = f.read().strip()
        with grpc.insecure_channel(f"{host}:50061") as channel:
            stub = engram_pb2_grpc.EngramStoreStub(channel)
            stats = stub.Stats(engram_pb2.StatsRequest(), timeout=5,
                               metadata=[("authorization", f"Bearer {token}")])
            return stats.rows_served

    def generate(self, tokens):
        stream = Stream(self.stub, tokens)
        stream.thread.join(timeout=240)
        self.assertIsNone(stream.error)
        return stream.tokens

    def streaming(self):
        """The long request, once the engine serves and 20 of its tokens have arrived."""
        self.cluster.coordinator.wait_for("engine engine-0 connected", 120)
        stream = Stream(self.stub, LONG)
        stream.wait_for_tokens(20)
        return stream

    def assert_exact(self, stream):
        """The stream completes with an undisturbed run's tokens: nothing lost or repeated."""
        stream.thread.join(timeout=240)
        self.assertIsNone(stream.error)
        self.assertEqual(stream.tokens, self.expected)

    def test_1_an_unreachable_memory_node_fails_over_and_returns(self):
        before = self.rows_served("h2")
        netns_cluster.link("h2", up=False)
        try:
            start = time.monotonic()
            self.assertEqual(self.generate(24), self.expected[:24])
            RECOVERY["memory_node_unreachable_request_s"] = time.monotonic() - start
        finally:
            netns_cluster.link("h2", up=True)
        # Back on the bridge, the node is used again once its backoff ends (≤ 10 s).
        deadline = time.monotonic() + 90
        while self.rows_served("h2") == before and time.monotonic() < deadline:
            self.assertEqual(self.generate(4), self.expected[:4])
        self.assertGreater(self.rows_served("h2"), before)

    def test_2_the_leader_hosts_link_down_replays_exactly(self):
        stream = self.streaming()
        cut = time.monotonic()
        netns_cluster.link("h4", up=False)
        time.sleep(4)
        netns_cluster.link("h4", up=True)
        self.assert_exact(stream)
        coordinator = self.cluster.coordinator
        # Missed heartbeats, or the stream breaking first when the host is slow to notice.
        detected = coordinator.first(r"missed 3 heartbeats|engine engine-0 disconnected",
                                     after=cut)
        back = coordinator.first("engine engine-0 connected", after=cut)
        self.assertIsNotNone(detected, coordinator.tail())
        self.assertIsNotNone(back, coordinator.tail())
        RECOVERY["link_down_4s"] = {
            "detection_s": detected - cut,
            "engine_back_s": back - cut,
            "first_token_after_fault_s": stream.first_token_after(cut) - cut,
        }

    def test_3_a_host_that_disappears_is_restarted_where_the_layout_allows(self):
        stream = self.streaming()
        cut = time.monotonic()
        for pid in host_pids("h5"):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        self.assert_exact(stream)
        back = self.cluster.coordinator.first("engine engine-0 connected", after=cut)
        self.assertIsNotNone(back, self.cluster.coordinator.tail())
        RECOVERY["host_killed"] = {
            "engine_back_s": back - cut,
            "first_token_after_fault_s": stream.first_token_after(cut) - cut,
        }

    def test_4_a_cut_between_the_engine_hosts_never_hangs(self):
        stream = self.streaming()
        cut = time.monotonic()
        netns_cluster.cut("h4", "h5")
        coordinator = self.cluster.coordinator
        try:
            # Torn down within the step bound plus three heartbeats (and margin).
            torn_down = coordinator.wait_for(r"engine engine-0 disconnected|missed 3 heartbeats",
                                             120, after=cut)
        finally:
            netns_cluster.cut("h4", "h5", cut=False)
        self.assert_exact(stream)
        back = coordinator.first("engine engine-0 connected", after=cut)
        self.assertIsNotNone(back, coordinator.tail())
        RECOVERY["engine_hosts_cut"] = {
            "torn_down_s": torn_down - cut,
            "engine_back_s": back - cut,
            "first_token_after_fault_s": stream.first_token_after(cut) - cut,
        }


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
