"""The public API from Python, as a client would use it: Debian's grpcio (/usr/bin/python3)
and the stubs the build generates from proto/inference.proto into build/python
(proto/CMakeLists.txt), against a real dsv4-coordinator that launches its engine with mpirun
(cluster-configs/local.yaml: 1 attention + 1 expert rank) on a v4-tiny checkpoint generated
into a temporary directory.

Usage: coordinator_client_test.py BIN_DIR SOURCE_DIR PYTHON_STUB_DIR

Every wait is bounded; the whole test takes a few seconds.
"""
import json
import os
import queue
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import unittest

import grpc

BIN_DIR, SOURCE_DIR, STUB_DIR = sys.argv[1:4]
sys.path.insert(0, STUB_DIR)
from proto import inference_pb2, inference_pb2_grpc  # noqa: E402  (generated at build time)

RPC_TIMEOUT_S = 10
START_TIMEOUT_S = 15   # until the coordinator prints its address
ENGINE_TIMEOUT_S = 20  # until the launched engine reports "serving"
STOP_TIMEOUT_S = 15    # SIGTERM until exit
PROMPT = "Hello world"


def engine_processes(marker):
    """Pids of live processes whose command line contains `marker` (our temp dir)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == os.getpid():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in cmdline:
            pids.append(int(entry))
    return pids


class CoordinatorClientTest(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.tmp = tempfile.mkdtemp(prefix="dsv4-client-test-")
        cls.process = None
        cls.channel = None
        try:
            cls._start()
        except BaseException:
            cls._cleanup()
            raise

    @classmethod
    def _start(cls):
        # The model's name is the checkpoint directory's last component.
        cls.checkpoint = os.path.join(cls.tmp, "v4-tiny")
        subprocess.run([os.path.join(BIN_DIR, "dsv4"), "checkpoint", "generate", "--preset",
                        "v4-tiny", "--seed", "7", "--out", cls.checkpoint],
                       check=True, timeout=60, stdout=subprocess.DEVNULL)
        with open(os.path.join(cls.checkpoint, "config.json")) as f:
            cls.config = json.load(f)

        cls.process = subprocess.Popen(
            [os.path.join(BIN_DIR, "dsv4-coordinator"),
             "--cluster", os.path.join(SOURCE_DIR, "cluster-configs", "local.yaml"),
             "--checkpoint", cls.checkpoint, "--listen", "127.0.0.1:0",
             "--admin-listen", "127.0.0.1:0", "--engine-listen", "127.0.0.1:0",
             "--metrics-listen", "off",
             "--admin-token-file", os.path.join(cls.tmp, "admin.token")],
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        # The coordinator (and the engine it launches) log to stdout; drain it all the time so
        # a full pipe never blocks them, and keep it for failure messages.
        cls.output = []
        addresses = queue.Queue()

        def drain():
            for line in cls.process.stdout:
                cls.output.append(line)
                match = re.search(r"dsv4-coordinator listening on (\S+)", line)
                if match:
                    addresses.put(match.group(1))
            addresses.put(None)  # the process closed its stdout (exited)

        cls.drainer = threading.Thread(target=drain, daemon=True)
        cls.drainer.start()
        try:
            address = addresses.get(timeout=START_TIMEOUT_S)
        except queue.Empty:
            address = None
        if address is None:
            raise RuntimeError("dsv4-coordinator printed no address:\n" + cls.log())

        cls.channel = grpc.insecure_channel(address)
        grpc.channel_ready_future(cls.channel).result(timeout=RPC_TIMEOUT_S)
        cls.stub = inference_pb2_grpc.InferenceStub(cls.channel)
        deadline = time.monotonic() + ENGINE_TIMEOUT_S
        while True:
            status = cls.stub.GetClusterStatus(inference_pb2.ClusterStatusRequest(),
                                               timeout=RPC_TIMEOUT_S)
            if any(e.state == "serving" for e in status.engines):
                break
            if time.monotonic() > deadline or cls.process.poll() is not None:
                raise RuntimeError(f"no serving engine after {ENGINE_TIMEOUT_S} s; status:\n"
                                   f"{status}\ncoordinator output:\n{cls.log()}")
            time.sleep(0.1)

    @classmethod
    def log(cls):
        return "".join(cls.output[-60:])

    @classmethod
    def _cleanup(cls):
        """Kills whatever is left of what this test started (coordinator, mpirun, ranks)."""
        if cls.channel is not None:
            cls.channel.close()
        if cls.process is not None and cls.process.poll() is None:
            cls.process.kill()
            cls.process.wait(timeout=STOP_TIMEOUT_S)
        for pid in engine_processes(cls.tmp):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        shutil.rmtree(cls.tmp, ignore_errors=True)

    @classmethod
    def tearDownClass(cls):
        try:
            cls.channel.close()
            cls.channel = None
            cls.process.send_signal(signal.SIGTERM)
            try:
                code = cls.process.wait(timeout=STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                raise AssertionError(f"dsv4-coordinator still running {STOP_TIMEOUT_S} s after "
                                     f"SIGTERM:\n{cls.log()}")
            cls.drainer.join(timeout=5)
            if code != 0:
                raise AssertionError(f"dsv4-coordinator exited with {code}:\n{cls.log()}")
            # It stops the engine it launched: no rank (their command lines name our
            # checkpoint) outlives it.
            deadline = time.monotonic() + 5
            while engine_processes(cls.tmp) and time.monotonic() < deadline:
                time.sleep(0.1)
            left = engine_processes(cls.tmp)
            if left:
                raise AssertionError(f"engine processes left after the coordinator exited: {left}")
        finally:
            cls._cleanup()

    # --- helpers ------------------------------------------------------------------------

    def generate(self, request, timeout=RPC_TIMEOUT_S):
        """The whole stream of one Generate call, as a list of GenerateResponse."""
        return list(self.stub.Generate(request, timeout=timeout))

    def request(self, max_tokens=16, temperature=0.8, seed=3, **kwargs):
        return inference_pb2.GenerateRequest(
            text=PROMPT, max_tokens=max_tokens,
            sampling=inference_pb2.SamplingParams(temperature=temperature, seed=seed), **kwargs)

    @staticmethod
    def tokens(responses):
        return [t for r in responses for t in r.token_ids]

    def assert_invalid(self, request, *phrases):
        with self.assertRaises(grpc.RpcError) as raised:
            self.generate(request)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.INVALID_ARGUMENT,
                         raised.exception.details())
        for phrase in phrases:
            self.assertIn(phrase, raised.exception.details())

    # --- tests --------------------------------------------------------------------------

    def test_generate_streams_tokens_then_usage_and_timings(self):
        responses = self.generate(self.request(max_tokens=16))
        self.assertGreaterEqual(len(responses), 1)
        *body, last = responses
        for r in body:  # tokens (or text) as they arrive; no finish fields yet
            self.assertTrue(r.token_ids or r.text, r)
            self.assertEqual(r.finish_reason, inference_pb2.FINISH_REASON_UNSPECIFIED)
            self.assertFalse(r.HasField("usage"))
        tokens = self.tokens(responses)
        self.assertEqual(len(tokens), 16)
        vocab = self.config["vocab_size"]
        self.assertTrue(all(0 <= t < vocab for t in tokens), tokens)
        self.assertEqual(last.finish_reason, inference_pb2.FINISH_REASON_LENGTH)
        self.assertEqual(last.usage.completion_tokens, 16)
        prompt = self.stub.Tokenize(inference_pb2.TokenizeRequest(text=PROMPT),
                                    timeout=RPC_TIMEOUT_S)
        self.assertEqual(last.usage.prompt_tokens, len(prompt.token_ids))
        self.assertGreater(last.timings.time_to_first_token_ms, 0)
        self.assertGreater(last.timings.mean_time_per_output_token_ms, 0)
        self.assertGreaterEqual(last.timings.total_ms, last.timings.time_to_first_token_ms)

    def test_same_seed_same_tokens(self):
        first = self.tokens(self.generate(self.request(seed=11)))
        second = self.tokens(self.generate(self.request(seed=11)))
        self.assertEqual(len(first), 16)
        self.assertEqual(first, second)

    def test_token_ids_prompt(self):
        prompt = self.stub.Tokenize(inference_pb2.TokenizeRequest(text=PROMPT),
                                    timeout=RPC_TIMEOUT_S).token_ids
        from_ids = self.generate(inference_pb2.GenerateRequest(
            token_ids=inference_pb2.TokenIds(ids=prompt), max_tokens=8,
            sampling=inference_pb2.SamplingParams(temperature=0)))
        from_text = self.generate(inference_pb2.GenerateRequest(
            text=PROMPT, max_tokens=8, sampling=inference_pb2.SamplingParams(temperature=0)))
        self.assertEqual(self.tokens(from_ids), self.tokens(from_text))
        self.assertEqual(from_ids[-1].usage.prompt_tokens, len(prompt))

    def test_request_id_makes_a_retry_idempotent(self):
        first = self.generate(self.request(seed=21, request_id="client-test-idempotent"))
        # The retry (the same request) gets the first call's result, not a new run.
        retry = self.generate(self.request(seed=21, request_id="client-test-idempotent"))
        self.assertEqual(self.tokens(retry), self.tokens(first))
        self.assertEqual(retry[-1].finish_reason, inference_pb2.FINISH_REASON_LENGTH)
        # The same request_id with another request is refused, never answered with the first.
        with self.assertRaises(grpc.RpcError) as raised:
            self.generate(self.request(seed=22, request_id="client-test-idempotent"))
        self.assertEqual(raised.exception.code(), grpc.StatusCode.ALREADY_EXISTS)

    def test_cancelled_call_frees_the_engine(self):
        call = self.stub.Generate(self.request(max_tokens=2000), timeout=RPC_TIMEOUT_S)
        next(call)  # the first tokens arrived: the request runs on the engine
        call.cancel()
        with self.assertRaises(grpc.RpcError) as raised:
            list(call)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.CANCELLED)
        deadline = time.monotonic() + 10
        while True:
            status = self.stub.GetClusterStatus(inference_pb2.ClusterStatusRequest(),
                                                timeout=RPC_TIMEOUT_S)
            if sum(e.running_requests for e in status.engines) == 0 and status.queue_depth == 0:
                break
            self.assertLess(time.monotonic(), deadline, f"still running:\n{status}")
            time.sleep(0.1)
        # The engine serves the next request as usual.
        self.assertEqual(len(self.tokens(self.generate(self.request(max_tokens=4)))), 4)

    def test_invalid_fields_name_the_field_and_range(self):
        self.assert_invalid(self.request(max_tokens=0), "max_tokens", "[1, ", "got 0")
        bad_top_p = self.request()
        bad_top_p.sampling.top_p = 2
        self.assert_invalid(bad_top_p, "sampling.top_p", "(0, 1]", "got 2")
        bad_temperature = self.request(temperature=-1)
        self.assert_invalid(bad_temperature, "sampling.temperature", "[0, 2]")
        vocab = self.config["vocab_size"]
        self.assert_invalid(
            inference_pb2.GenerateRequest(token_ids=inference_pb2.TokenIds(ids=[1, vocab]),
                                          max_tokens=4),
            "token_ids.ids[1]", f"[0, {vocab})")
        self.assert_invalid(inference_pb2.GenerateRequest(max_tokens=4), "prompt")
        self.assert_invalid(self.request(model="no-such-model"), "model", '"v4-tiny"')

    def test_tokenize(self):
        ids = self.stub.Tokenize(inference_pb2.TokenizeRequest(text=PROMPT),
                                 timeout=RPC_TIMEOUT_S).token_ids
        self.assertGreater(len(ids), 1)
        self.assertEqual(ids[0], self.config["bos_token_id"])  # Generate's encoding: BOS first
        again = self.stub.Tokenize(inference_pb2.TokenizeRequest(model="v4-tiny", text=PROMPT),
                                   timeout=RPC_TIMEOUT_S).token_ids
        self.assertEqual(list(ids), list(again))

    def test_list_models(self):
        models = self.stub.ListModels(inference_pb2.ListModelsRequest(),
                                      timeout=RPC_TIMEOUT_S).models
        self.assertEqual([m.name for m in models], ["v4-tiny"])
        self.assertGreater(models[0].active_parameters, 0)
        self.assertGreater(models[0].parameters, models[0].active_parameters)
        # local.yaml's engine.max_seq_len, capped by the model's position embeddings.
        self.assertEqual(models[0].max_context,
                         min(4096, self.config["max_position_embeddings"]))

    def test_cluster_status(self):
        status = self.stub.GetClusterStatus(inference_pb2.ClusterStatusRequest(),
                                            timeout=RPC_TIMEOUT_S)
        self.assertEqual([e.id for e in status.engines], ["engine-0"])
        engine = status.engines[0]
        self.assertEqual(engine.state, "serving")
        self.assertEqual(engine.restarts, 0)
        self.assertEqual([(r.rank, r.role) for r in engine.ranks],
                         [(0, "attention"), (1, "expert")])
        for r in engine.ranks:
            self.assertGreater(r.pid, 0)
            self.assertGreater(r.resident_bytes, 0)

    def test_health(self):
        try:
            from grpc_health.v1 import health_pb2, health_pb2_grpc
        except ImportError:
            # Debian packages no grpc_health (python3-grpcio has no health module): call
            # grpc.health.v1.Health/Check by hand. An empty HealthCheckRequest is b"" and
            # HealthCheckResponse{status: SERVING} is b"\x08\x01".
            check = self.channel.unary_unary("/grpc.health.v1.Health/Check")
            self.assertEqual(check(b"", timeout=RPC_TIMEOUT_S), b"\x08\x01")
            return
        response = health_pb2_grpc.HealthStub(self.channel).Check(
            health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT_S)
        self.assertEqual(response.status, health_pb2.HealthCheckResponse.SERVING)


if __name__ == "__main__":
    unittest.main(argv=sys.argv[:1], verbosity=2)
